"""The API server's gunicorn configuration, in every mode: `gunicorn --config
python:workers.gunicorn_conf --bind HOST:PORT --workers N 'service:create_app()'` (the compose
file, the Dockerfile, both runners, `bench/events.py`).

What every API server shares lives here, once; what differs per deployment (the address, the
number of processes, the control socket) stays on its command line, which wins over this file.
Gunicorn reads every module-level name that is a setting's name (`worker_class`, `threads`,
`accesslog`) or a server hook (`on_starting`, `post_worker_init`), so this module defines
nothing else.
"""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any

from workers.parent_watch import watch_from_env

# An open event stream holds a server thread until it ends (`service.events`): threads, not
# gunicorn's default sync workers, whose first N streams would take every process.
worker_class = "gthread"
threads = 128
accesslog = "-"


def on_starting(server: Any) -> None:
    """In the arbiter, before it binds: stop (SIGTERM) when the runner that started it dies
    (only when a runner started it: `workers.parent_watch`)."""
    watch_from_env(signal.SIGTERM, name="gunicorn")


def post_worker_init(worker: Any) -> None:
    """In each worker process, once the app is loaded (`worker.wsgi`):

    - Move every object alive now (the app, its routes, the OpenAPI document, the imported
      libraries: about 110,000 objects) out of the cyclic garbage collector's reach. They live
      as long as the process, and a full collection that walks them stops every thread of the
      process for about 70 ms (measured on the development machine), which was the p99 of
      `GET /jobs/{id}` in `bench/events.py`. The collector still runs, over what is allocated
      after this.
    - On SIGTERM (a graceful stop: the arbiter's, Docker's, the runner's), end the open event
      streams (`service.events.drain_streams`) before gunicorn waits for its requests: a stream
      lasts as long as its job, so the stop would otherwise take the whole graceful timeout
      (30 s; Docker kills at 10 s, cutting every other request too). Clients reconnect with
      `Last-Event-ID` and miss nothing.
    """
    from service.events import drain_streams  # the app has imported it: nothing is loaded here

    gc.freeze()
    graceful_exit = signal.getsignal(signal.SIGTERM)
    extensions = worker.wsgi.extensions

    def on_sigterm(signum: int, frame: Any) -> None:
        # a thread: the hub takes a lock, and a signal handler must never wait for one
        threading.Thread(target=drain_streams, args=(extensions,), daemon=True).start()
        if callable(graceful_exit):
            graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    # as gunicorn has it: SIGTERM does not interrupt the system calls of requests in flight
    signal.siginterrupt(signal.SIGTERM, False)
