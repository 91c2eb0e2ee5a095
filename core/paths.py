"""Where an installed trainyard keeps its files outside a checkout: the user's data folder.

One rule for the server (`service.config.default_var_dir`: the embedded mode's SQLite file,
broker folder and API key) and the client (`client.api.api_key_locations`: where it looks for
that key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def user_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_DATA_HOME/trainyard`, by default `~/.local/share/trainyard`."""
    env = os.environ if env is None else env
    data = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/share")
    return Path(data) / "trainyard"
