"""The trainyard service: the API (Flask, `service.app`), the domain modules the workers share
(`service.lifecycle`, `service.tables`, `service.sweeps`, ...) and their settings.

Importing this package loads no web framework: a worker that needs `service.tables` does not
get Flask with it. `create_app` imports `service.app` when called, so `flask --app service`,
`gunicorn 'service:create_app()'` and `from service import create_app` work as they always did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The Flask application factory (`service.app.create_app`): settings from the environment,
    `test_config` overriding any Flask config key."""
    from service.app import create_app as factory

    return factory(test_config)
