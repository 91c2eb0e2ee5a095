"""`trainyard-server`: the embedded mode (`workers.embedded`) as an installed command.

The command is installed by every `pip install trainyard`, the client-only base too; without
the `[server]` extra it says what to install instead of ending in an ImportError traceback.
"""

from __future__ import annotations

import sys

from workers.server_args import parse_args


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
