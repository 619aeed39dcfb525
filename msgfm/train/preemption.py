"""Turning SLURM's warning signals (and Ctrl-C) into a clean checkpoint-and-exit.

SLURM sends SIGTERM when it preempts or cancels a job and, with the profile's
``--signal=URG@<lead>``, SIGURG that many seconds before the time limit; a terminal sends SIGINT
on Ctrl-C. SIGURG because every other process of the job step ignores it by default (the
Snakemake that runs the rule, shells, srun): SIGUSR1 would kill them, and with them the step.
SIGUSR1 is honoured too, for ``--signal=B:USR1`` setups. The handler only records the signal;
the training loop checks it every ``preempt_check_every`` steps and at each epoch's end (the
ranks' all-reduce of the flag makes the host wait for the GPU, so not after every step), writes
a checkpoint and leaves with :data:`EXIT_REQUEUE`, so that the requeued (or rerun) job resumes
from exactly that step instead of losing up to ``checkpoint_every`` steps.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from msgfm.errors import MsgfmError

log = logging.getLogger(__name__)

# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted job should do.
EXIT_REQUEUE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGURG, signal.SIGUSR1)
# The time-limit warning (the profile's --signal): the job may requeue itself (msgfm.train.launch).
TIME_LIMIT_SIGNAL = signal.SIGURG


class Preempted(MsgfmError):
    """Raised after the checkpoint is written, to end the process with EXIT_REQUEUE."""


class PreemptionWatcher:
    """Installs handlers for :data:`SIGNALS` and remembers whether one arrived."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatcher:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "received %s: checkpointing at the end of this step", signal.Signals(signum).name
        )
        self.received = signum

    @property
    def triggered(self) -> bool:
        return self.received is not None
