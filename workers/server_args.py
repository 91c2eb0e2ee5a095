"""The embedded mode's command line, shared by its two entry points: `trainyard-server`
(`workers.server_command`, installed by every install) and `python -m workers.embedded`.

Standard library only, so that the client-only install can print it.
"""

from __future__ import annotations

import argparse

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
