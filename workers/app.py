"""Entry module for `celery -A workers.app worker`: the Flask app factory binds Celery.

Importing `workers.tasks` registers the `shared_task`s with the app's Celery instance;
`workers.maintenance.install` starts the reaper and reconciler in the worker's main process.

The worker still builds the Flask app, for its configuration only: the tasks read their
settings from `flask.current_app` inside the app context `service.celery`'s task class pushes,
and `maintenance.install` takes the app. Nothing else of the web stack runs here; the modules
underneath (`service.tables`, `service.lifecycle`, `service.celery`, `workers.runtime`) load no
Flask.
"""

from __future__ import annotations

from service.app import create_app
from workers import (
    maintenance,
    tasks,  # noqa: F401  (registers the tasks)
    webhooks,  # noqa: F401  (registers the webhook delivery task)
)

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
maintenance.install(flask_app, celery_app)
