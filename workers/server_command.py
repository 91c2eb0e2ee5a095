"""`trainyard-server`: the embedded mode (`workers.embedded`) as an installed command.

The command is installed by every `pip install trainyard`, the client-only base too; without
the `[server]` extra it says what to install instead of ending in an ImportError traceback.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
The embedded mode: the API (gunicorn) and one Celery worker on a SQLite file and a server-less
broker. It migrates the store, creates an API key on first start and prints it with the
dashboard's address once both are ready; Ctrl-C stops both.

environment:
  PORT                          the API's port (default 8000)
  TRAINYARD_VAR_DIR             the SQLite file, broker folder and key (default: ./var of a
                                checkout, else $XDG_DATA_HOME/trainyard or
                                ~/.local/share/trainyard)
  TRAINYARD_WORKER_CONCURRENCY  jobs trained at once (default 1)
"""


def parse_args(prog: str, argv: list[str] | None) -> argparse.Namespace:
    """The embedded mode's command line (only `--help`, which prints DESCRIPTION and exits)."""
    return argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args("trainyard-server", argv)
    try:
        from workers import embedded
    except ModuleNotFoundError as exc:
        print(
            f"trainyard-server: the server's packages are not installed (no module {exc.name!r});"
            ' install them with: pip install "trainyard[server]"',
            file=sys.stderr,
        )
        return 2
    return embedded.main(argv)


if __name__ == "__main__":
    sys.exit(main())
