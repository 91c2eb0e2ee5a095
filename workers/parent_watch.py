"""The embedded runner's children follow it when it dies without a chance to stop them.

`python -m workers.embedded` starts gunicorn and a Celery worker. If the runner is killed
(`kill -9`, the out-of-memory killer), two things take its children down with it:

- On Linux the kernel does: `pdeathsig_preexec` is the children's `preexec_fn`; it calls
  `prctl(PR_SET_PDEATHSIG, sig)` after the fork and before the exec, so the kernel sends `sig`
  to the child the moment the runner exits.
- Elsewhere (or if `prctl` fails) a daemon thread in the child does: the runner puts its PID in
  `TRAINYARD_PARENT_PID`, and `watch_from_env` (started by the gunicorn config
  `workers.gunicorn_conf` and, in the Celery worker's main process, by the `worker_init`
  handler of this module, which the runner loads with `celery worker --include`) checks
  `os.getppid()` every second and signals its own process once the parent is gone.
- Everywhere, the same thread kills its process `GRACE_S` seconds after the parent is gone if
  the shutdown has not finished by then (a Celery cold shutdown was seen to hang on a loaded
  machine, leaving an orphan worker); a job it was running is handed back by the reaper.

The signals are the shutdowns that need nobody to escalate them: SIGQUIT for the Celery worker
(a cold shutdown: the running task is stopped, its message goes back to the queue and the job is
handed back by the lifecycle's rules), SIGTERM for gunicorn (it stops its own workers). The
worker's pool processes get SIGKILL from the kernel when the worker's main process dies (Celery
sets that itself), and gunicorn's workers notice a new parent on their own.

The Celery worker also touches the file named by `TRAINYARD_WORKER_READY_FILE` once it is ready
(`worker_ready`): the runner prints its key-and-dashboard block after that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_ready

log = logging.getLogger(__name__)

PARENT_ENV = "TRAINYARD_PARENT_PID"
READY_FILE_ENV = "TRAINYARD_WORKER_READY_FILE"
#: How often the watch thread looks at its parent PID.
INTERVAL_S = 1.0
#: How long a child may take to shut down after its runner died before it is killed.
GRACE_S = 20.0

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2


def _prctl() -> Callable[..., int] | None:
    """libc's `prctl`, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def pdeathsig_preexec(sig: int, parent_pid: int | None = None) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when this process dies.

    Built in the parent (libc is loaded before the fork); in the child it only calls `prctl`.
    A parent that died between the fork and the `prctl` call would never send the signal, so
    the child then exits at once. Where `prctl` is missing it does nothing (the watch thread,
    `watch_from_env`, covers those platforms)."""
    prctl = _prctl()
    parent = os.getpid() if parent_pid is None else parent_pid

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def pdeathsig() -> int:
    """The signal the kernel sends this process when its parent dies (0: none, or unknown)."""
    prctl = _prctl()
    if prctl is None:
        return 0
    value = ctypes.c_int(0)
    if prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        return 0
    return value.value


def watch_parent(
    parent_pid: int,
    sig: int,
    interval: float = INTERVAL_S,
    name: str = "process",
    *,
    send: bool = True,
    grace: float = GRACE_S,
) -> threading.Thread:
    """Start a daemon thread that, once this process's parent is no longer `parent_pid` (the
    parent died and the process was re-parented), sends `sig` to this process (unless `send` is
    False: the kernel sent it already) and, if the process is still alive `grace` seconds later
    (a shutdown that hangs: a Celery cold shutdown was seen to on a loaded machine), kills it.
    Returns the thread."""

    def run() -> None:
        stop = threading.Event()
        while os.getppid() == parent_pid:
            stop.wait(interval)
        if send:
            log.warning(
                "%s: the embedded runner (pid %s) is gone; stopping (%s)",
                name,
                parent_pid,
                signal.Signals(sig).name,
            )
            os.kill(os.getpid(), sig)
        stop.wait(grace)
        log.error(
            "%s: still running %ss after the embedded runner (pid %s) died; killing it",
            name,
            grace,
            parent_pid,
        )
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=run, name="trainyard-parent-watch", daemon=True)
    thread.start()
    return thread


def watch_from_env(sig: int, name: str = "process") -> threading.Thread | None:
    """`watch_parent` for the runner named in `TRAINYARD_PARENT_PID`, unless that variable is
    unset (not started by the runner). Where the kernel already sends `sig` when the parent
    dies (`pdeathsig_preexec` worked), the thread only makes sure the process is gone `GRACE_S`
    seconds later (one signal, not two). A runner that is already gone is seen at once."""
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return None
    parent = int(raw)
    kernel = os.getppid() == parent and pdeathsig() == sig
    return watch_parent(parent, sig, name=name, send=not kernel)


def _on_worker_init(**_: Any) -> None:
    watch_from_env(signal.SIGQUIT, name="celery worker")


def _on_worker_ready(**_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        try:
            Path(path).write_text(f"{os.getpid()}\n")
        except OSError:
            log.warning("could not write the ready file %s", path, exc_info=True)


# `celery -A workers.app worker --include workers.parent_watch` imports this module in the
# worker's main process before `worker_init` is sent.
worker_init.connect(_on_worker_init, weak=False)
worker_ready.connect(_on_worker_ready, weak=False)
