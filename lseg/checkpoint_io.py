"""Reading and writing checkpoint files safely.

Every checkpoint read in the project goes through :func:`load_checkpoint`: ``weights_only=True``
(a pickle that would run code is refused), ``map_location="cpu"``, and one clear line for the
errors users cause (missing, truncated, not a checkpoint, not ours). Writes go through
:func:`save_atomic`: temp file in the same directory, fsync, ``os.replace``, fsync of the
directory — a crash or full disk at any point leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

FORMAT = "lseg-hpc"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU. ``trust_pickle`` allows full unpickling (never default)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle
        what = "an empty file" if not head else f"starts with {head!r}"
        raise CheckpointError(f"{path}: not a checkpoint file ({what}; PyTorch checkpoints are zip archives)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        blocked, detail = _unpickling_detail(str(exc))
        if blocked:  # the file names a Python callable/class to import and call
            raise CheckpointError(
                f"{path}: refused to unpickle objects that could run code ({detail[:160]}); "
                "only plain tensors/containers are loaded by default"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({detail[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means the bytes are not a usable checkpoint
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = msg.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice to the cause
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({msg[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (top level is {type(obj).__name__}, not a dict)")
    return obj


def _unpickling_detail(message: str) -> tuple[bool, str]:
    """(is it a blocked import, the informative line) of torch's multi-paragraph weights_only error.

    torch wraps every unpickling failure in the same boilerplate ("Weights only load failed ...");
    the line that matters names either the GLOBAL that was blocked (a pickle that would import and
    call Python code) or the invalid opcode (the file is not a pickle at all).
    """
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln:
            return True, ln.split("WeightsUnpickler error:")[-1].strip().split(" was not")[0]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    useful = [ln for ln in lines if not ln.startswith(boilerplate)] or lines or ["unpickling failed"]
    return False, useful[0].split("WeightsUnpickler error:")[-1].strip() or "unpickling failed"


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str) -> Iterator[IO]:
    """Yield a temp file beside ``path``; on success fsync it, rename it over ``path``, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # name the file the user knows (not the temp file), so CLIs can print "path: reason"
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _RecordingWriter:
    """File wrapper that remembers the OSError of a failed write.

    Why: ``torch.save`` turns a failed write (disk full, file-size limit, quota) into an opaque
    ``RuntimeError('... unexpected pos 704 vs 598')``; the recorded OSError is what the user needs.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = exc
            raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers only ever see the old or the complete new file.

    A write that fails (disk full, quota, file-size limit, unwritable folder) raises one-line
    :class:`CheckpointError` naming the file and the OS reason; the temp file is removed and a
    previous ``path`` is left untouched.
    """
    path = Path(path)
    writer: _RecordingWriter | None = None
    try:
        with _atomic_file(path, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
    except (OSError, RuntimeError) as exc:
        cause = writer.error if writer is not None and writer.error is not None else exc
        if not isinstance(cause, OSError):
            raise  # not an I/O failure: a bug, keep the traceback
        reason = cause.strerror or str(cause)
        kept = "; the previous file is unchanged" if path.exists() else ""
        raise CheckpointError(f"could not save {path}: {reason}{kept}") from None


def write_text_atomic(text: str, path: str | Path) -> None:
    """Same guarantee as :func:`save_atomic` for small text files (index.json, pointers)."""
    with _atomic_file(Path(path), "w") as f:
        f.write(text)
