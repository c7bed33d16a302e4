"""Stop requests: SIGTERM / SIGUSR1, what SLURM (and torchrun, passing it on) sends before it kills
a job. One home for how a training run hears them:

* :class:`StopRequest` installs handlers that only set a flag; :meth:`StopRequest.requested` is
  the check, collective over the ranks, so every rank stops at the same point. Training checks it
  after each iteration and validation before each image (:func:`engine.validation.validate`), so a
  run stops within one iteration or one validation image, then writes its checkpoint.
* :func:`ignore_stop_signals` is the ``worker_init_fn`` of the training and validation loaders: a
  cluster signals every process of the job step, loader workers included, and a worker killed by
  the signal would end the run with a loader error before the checkpoint. The signal of their own
  rank (which ends them when it shuts the loader down) still ends them.
"""
import os
import signal
import threading

import torch

from .distributed import any_rank

SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


class StopRequested(Exception):
    """Raised by a phase that a stop request ended early (validation); the caller checkpoints."""


class StopRequest:
    """SIGTERM / SIGUSR1 set a flag (the handlers are installed on construction from the main
    thread and put back by :meth:`restore`)."""

    def __init__(self):
        self.name = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.name = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        """Whether any rank has been asked to stop. Collective: every rank must call it the same
        number of times."""
        flag = any_rank(self.name is not None, device)
        if flag and self.name is None:
            self.name = "a signal to another rank"
        return flag

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of a loader whose process handles stop requests: the worker ignores a stop
    signal from anyone but its rank, whose own ``terminate()`` (when the rank shuts its loaders
    down or exits) still ends it at once, as torch's worker handler does. Linux (``sigwaitinfo``
    tells the sender); elsewhere torch's handler stays."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)      # every thread of the worker; one waits

    def watch():
        while True:
            info = signal.sigwaitinfo(SIGNALS)
            if info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()
