"""lseg.engine.preemption: what each stop signal means (real signals sent to this process)."""
from __future__ import annotations

import os
import signal

from lseg.engine.preemption import (REQUEUE_EXIT_CODE, STATUS_EXIT_CODES, STOPPED_EXIT_CODE, PreemptionFlag,
                                    decide)


def test_usr_signals_vote_requeue_term_votes_stop_and_wins():
    flag = PreemptionFlag()
    try:
        assert flag.votes() == (0.0, 0.0) and flag.received is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag.votes() == (1.0, 0.0) and flag.received == "SIGUSR2"
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.votes() == (1.0, 1.0) and flag.received == "SIGTERM"
    finally:
        flag.restore()
    other = PreemptionFlag()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert other.votes() == (1.0, 0.0) and other.received == "SIGUSR1"
    finally:
        other.restore()


def test_restore_puts_back_the_previous_handlers():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    term = signal.getsignal(signal.SIGTERM)
    try:
        flag = PreemptionFlag()
        assert signal.getsignal(signal.SIGTERM) is not term
        flag.restore()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1] and flag.received is None
        assert signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_votes_summed_over_ranks_decide_one_status_and_exit_code():
    assert decide(0, 0) is None
    assert decide(1, 0) == decide(2, 0) == "preempted"
    assert decide(0, 1) == decide(2, 1) == "stopped"  # any rank's SIGTERM stops the run
    assert STATUS_EXIT_CODES == {"completed": 0, "preempted": REQUEUE_EXIT_CODE, "stopped": STOPPED_EXIT_CODE}
    assert (REQUEUE_EXIT_CODE, STOPPED_EXIT_CODE) == (75, 143)


def test_a_process_that_stopped_on_a_signal_ignores_sigterm_on_its_way_out():
    """srun --kill-on-bad-exit TERMs the other ranks when the first one exits 75/143: that must not
    turn a saved rank's exit code into "terminated"."""
    term = signal.getsignal(signal.SIGTERM)
    try:
        PreemptionFlag().restore(exiting=True)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: this process goes on
        PreemptionFlag().restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # restore() alone puts back what it found
    finally:
        signal.signal(signal.SIGTERM, term)
