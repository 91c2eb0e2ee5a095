"""Entry module for `celery -A workers.app worker`: the Flask app factory binds Celery.

Importing `workers.tasks` registers the `shared_task`s with the app's Celery instance;
`workers.maintenance.install` starts the reaper and reconciler in the worker's main process.
"""

from __future__ import annotations

from service import create_app
from workers import (
    maintenance,
    tasks,  # noqa: F401  (registers the tasks)
    webhooks,  # noqa: F401  (registers the webhook delivery task)
)

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
maintenance.install(flask_app, celery_app)
