"""Checkpoints of a run: file naming and listing, retention, payload layout, averaging.

* :mod:`.files` - ``step_*.pt`` names, ``index.json``, :func:`list_run_checkpoints`, selection.
* :mod:`.manager` - :class:`CheckpointManager`: the trainer's saves, retention and resume choice.
* :mod:`.payload` - what a checkpoint file holds (training, averaged, converted) and the EMA keys.
* :mod:`.average` - uniform averaging of checkpoints (``tools/average_checkpoints.py``).

Safe reading and atomic writing of the files themselves live in :mod:`lseg.checkpoint_io`.
"""
from lseg.checkpoints.files import (
    RunCheckpoint, list_run_checkpoints, read_index, select_last, select_top, step_filename, step_files, step_of,
)

__all__ = ["RunCheckpoint", "list_run_checkpoints", "read_index", "select_last", "select_top", "step_filename",
           "step_files", "step_of"]
