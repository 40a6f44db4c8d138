"""What every command line entry point does with errors: user errors are one line, exit 2.

Why one place: ``python -m lseg.train`` and each ``tools/*.py`` script used to keep their own list
of "errors the user caused", and each list missed a different case (an unwritable output folder,
a label too long for the tokenizer, a failed checkpoint save), which then surfaced as a traceback.
Here is the one list, one formatter and one wrapper:

* :func:`user_error_types` - exception classes whose message is the whole story (it names the
  file, key or setting and the fix). Tools add their own (``AverageError``, ``SweepError``, ...).
* :func:`describe` - the one-line text for such an error (``OSError`` gets ``path: reason``).
* :func:`cli_main` - decorator for ``main(argv) -> int``: user errors print ``error: <text>`` on
  stderr and return 2, Ctrl-C returns 130, anything else keeps its traceback (a bug to report).
* :func:`is_peer_failure` - a torch.distributed error that only says "another rank is gone"; the
  trainer prints one line for it instead of a second, misleading traceback.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, Iterable, Sequence

#: Exit status for a user error (bad config, data, checkpoint, file system); one line on stderr.
USER_ERROR_EXIT_CODE = 2
#: Exit status after Ctrl-C.
INTERRUPTED_EXIT_CODE = 130

# Phrases of torch.distributed errors that mean a peer process died, hung or closed its connection.
_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "gloo/transport", "Timed out waiting",
                 "NCCL communicator was aborted", "Broken pipe")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are user errors everywhere (imported lazily: ``--help`` stays fast)."""
    from lseg.checkpoint_io import CheckpointError
    from lseg.config import ConfigError
    from lseg.data.errors import DataError
    from lseg.distributed import DistributedEnvError
    from lseg.engine.trainer import TrainingError
    from lseg.models.text import LabelError
    from lseg.models.weights import WeightsError
    from lseg.runtime import DeviceError

    return (ConfigError, CheckpointError, DataError, DistributedEnvError, TrainingError, WeightsError, LabelError,
            DeviceError)


def is_user_error(exc: BaseException, extra: Iterable[type[BaseException]] = ()) -> bool:
    """A user error, or an OSError about a named file (unwritable output dir, disk full, ...)."""
    if isinstance(exc, (*user_error_types(), *extra)):
        return True
    return isinstance(exc, OSError) and exc.filename is not None


def describe(exc: BaseException) -> str:
    """One line: the message, or ``path: reason`` for file-system errors."""
    if isinstance(exc, OSError) and exc.filename is not None and not str(exc).startswith(str(exc.filename)):
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        text = f"{where}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # never more than one line


def is_peer_failure(exc: BaseException) -> bool:
    """True for a torch.distributed error caused by another process failing (not by this one).

    Gloo reports a dead peer as a plain ``RuntimeError`` ("Connection closed by peer ...") and a
    hung one as a timeout; NCCL and the rendezvous store raise ``torch.distributed.DistError``
    subclasses. Only called when the world size is > 1.
    """
    try:
        import torch.distributed as dist

        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_MARKERS)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """First sentence of an error, without a leading C++ source location like ``[.../pair.cc:545]``."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:limit]


def cli_main(*extra: type[BaseException], prefix: str = "error") -> Callable:
    """Decorate ``main(argv) -> int`` so user errors become ``<prefix>: <one line>`` and exit 2.

    ``extra``: the tool's own error classes (they must carry one-line, self-explanatory messages).
    """
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return INTERRUPTED_EXIT_CODE
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
                if not is_user_error(exc, extra):
                    raise
                print(f"{prefix}: {describe(exc)}", file=sys.stderr)
                return USER_ERROR_EXIT_CODE
        return wrapper
    return wrap


# ``section.key=value`` (at least one dot before the ``=``): a config override, never a flag value.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with config overrides allowed anywhere, the one rule of every entry point.

    ``section.key=value`` tokens are taken out before argparse sees the rest and appended to
    ``args.overrides`` in order, so ``--config X optim.lr=1 --output-dir D`` works, and
    ``--scales 0.5 1.0 data.root=X`` does not feed the override to ``--scales``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    args = parser.parse_args([a for a in argv if not _OVERRIDE.match(a)])
    args.overrides = list(getattr(args, "overrides", None) or []) + overrides
    return args


def _number(kind: type, minimum: float, inclusive: bool) -> Callable[[str], float]:
    word = ">=" if inclusive else ">"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {word} {minimum:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


#: argparse ``type=`` validators: a bad flag value is argparse's one-line usage error (exit 2).
positive_int = _number(int, 0, inclusive=False)
non_negative_int = _number(int, 0, inclusive=True)
positive_float = _number(float, 0.0, inclusive=False)
non_negative_float = _number(float, 0.0, inclusive=True)
