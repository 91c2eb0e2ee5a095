"""Entry module for `celery -A workers.app worker`: the worker's Celery app, with no web stack.

Settings come from the environment (`service.config.Settings`), Celery's configuration from
them (`service.celery.celery_config`, as the API's Celery app has it); the tasks and the
maintenance loop read the settings, and the tasks their database sessions, from the
`workers.context.WorkerContext` bound to this app. Importing `workers.tasks` and
`workers.webhooks` registers their `shared_task`s (`trainyard.train_job`, the webhook
delivery task; `workers.predicting`: `trainyard.predict_job`; `workers.importing`:
`trainyard.import_dataset`) with it;
`workers.maintenance.install` starts the reaper and reconciler in the
worker's main process and handles hard time limits. Nothing here imports Flask.

`workers.runtime.preload` imports, here in the main process before the prefork pool forks,
what the first task of a pool process would otherwise import while it runs: a cold shutdown's
terminate signal that lands in such an import can be lost (see its docstring).
"""

from __future__ import annotations

from service.celery import celery_config, make_celery
from service.config import Settings
from workers import (
    importing,  # noqa: F401  (registers the import task)
    maintenance,
    predicting,  # noqa: F401  (registers the predict task)
    runtime,
    tasks,  # noqa: F401  (registers the tasks)
    webhooks,  # noqa: F401  (registers the webhook delivery task)
)
from workers.context import WorkerContext, bind

context = WorkerContext(Settings())
runtime.preload(context.settings.database_url)
celery_app = make_celery("trainyard", celery_config(context.settings))
bind(celery_app, context)
maintenance.install(context, celery_app)
