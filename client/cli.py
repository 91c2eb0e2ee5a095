"""The `trainyard` command."""

from __future__ import annotations


def main() -> int:
    raise SystemExit("trainyard: the command line is being built")
