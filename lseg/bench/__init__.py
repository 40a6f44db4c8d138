"""Measuring training: the step's speed, memory and MFU, the trainer's overhead, the data loader.

``tools/benchmark.py`` is the command line; the pieces live here so that tests and new
measurements use them directly:

* :mod:`lseg.bench.step` - times ``Trainer.run_step`` itself (per phase, through the trainer's
  ``phase_hook`` and ``batch_source`` seams), variants interleaved, with an optional time bound;
* :mod:`lseg.bench.variants` - precision / checkpointing / compile / channels-last as config changes;
* :mod:`lseg.bench.flops` - model FLOPs on fake tensors, GPU peak table, MFU;
* :mod:`lseg.bench.memory` - peak memory of a region on CUDA or CPU;
* :mod:`lseg.bench.report` - machine header, tables, JSON lines;
* :mod:`lseg.bench.commands` - the ``train-step``, ``overhead`` and ``data`` sub-commands.
"""
