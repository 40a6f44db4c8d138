"""Stop signals: what each one means, and the flag the trainer reads once per step.

One contract for every launcher (``python -m lseg.train``, ``slurm/train_mseg.sh``,
``tools/submit.py``):

* SIGUSR1 / SIGUSR2 - Slurm's warning before the time limit (``--signal``), preemption with
  ``preempt_send_user_signal``, ``scancel --signal=USR2``: save, status ``preempted``, exit 75, and
  the launcher requeues the job.
* SIGTERM - ``scancel``, preemption without the user signal, the time limit itself: save, status
  ``stopped``, exit 143, and the job ends.

SIGTERM never requeues: it is how a user ends a job, and where Slurm preempts with
``PreemptMode=REQUEUE`` it requeues the job by itself. Slurm sends SIGKILL ``KillWait`` (30 s by
default) after SIGTERM, so the step in flight plus the save must fit in it.

The handler only records the signal: saving from inside a handler would race the training step and
cannot run collectives. The trainer sends this rank's votes (:meth:`PreemptionFlag.votes`) in the
all-reduce every step already does, so all ranks take the same :func:`decide` at the same step
boundary; rank 0 then saves. SIGTERM wins when both kinds arrived.
"""
from __future__ import annotations

import signal
from types import FrameType

#: Exit status after a save on SIGUSR1/SIGUSR2: "requeue me" (EX_TEMPFAIL).
REQUEUE_EXIT_CODE = 75
#: Exit status after a save on SIGTERM: "stopped, do not requeue" (128 + SIGTERM, as a shell reports it).
STOPPED_EXIT_CODE = 128 + signal.SIGTERM

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM,)

#: The trainer's final status -> the process exit code both launchers act on.
STATUS_EXIT_CODES = {"completed": 0, "preempted": REQUEUE_EXIT_CODE, "stopped": STOPPED_EXIT_CODE}


class PreemptionFlag:
    """Records SIGUSR1/SIGUSR2 (requeue) and SIGTERM (stop) while installed; :meth:`restore` uninstalls."""

    def __init__(self) -> None:
        self.requeue_signal: str | None = None
        self.stop_signal: str | None = None
        self._previous: dict[int, object] = {}
        for signum in (*REQUEUE_SIGNALS, *STOP_SIGNALS):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            self.stop_signal = name
        else:
            self.requeue_signal = name

    @property
    def received(self) -> str | None:
        """The signal that decides this rank's vote (SIGTERM over SIGUSR1/2), for the log."""
        return self.stop_signal or self.requeue_signal

    def votes(self) -> tuple[float, float]:
        """(requeue, stop) of this rank: summed over ranks, they feed :func:`decide`."""
        return float(self.requeue_signal is not None), float(self.stop_signal is not None)

    def restore(self, exiting: bool = False) -> None:
        """Put back the handlers that were installed before us.

        ``exiting``: the run stopped on a signal and saved, and the process is on its way out with
        the exit code its launcher acts on. SIGTERM then stays ignored: srun (``--kill-on-bad-exit``)
        sends it to the other ranks as soon as the first one exits, and a rank killed during its
        own exit would turn "saved, requeue me" into "terminated".
        """
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if exiting:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def decide(requeue_votes: float, stop_votes: float) -> str | None:
    """The step's verdict from the summed votes: ``"stopped"``, ``"preempted"`` or None (train on)."""
    if stop_votes:
        return "stopped"
    if requeue_votes:
        return "preempted"
    return None
