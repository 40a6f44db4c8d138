"""Data layer: dataset registry, label spaces, MSeg taxonomy, transforms, resumable sampler, loaders.

Public names are imported lazily (PEP 562) so that ``python -m lseg.data.taxonomy`` does not
import its own module twice and ``import lseg.data`` stays cheap. See docs/architecture.md for the
batch contract and README.md ("Data") for usage.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DataError": "errors",
    "BadSample": "datasets", "LabeledDataset": "datasets", "SegmentationSet": "datasets", "open_dataset": "datasets",
    "ClassList": "registry", "DatasetSpec": "registry", "Encoding": "registry", "register": "registry",
    "check_label_space": "registry", "dataset_root": "registry",
    "LabelSpace": "names", "label_space": "names",
    "benchmark_loader": "loader", "build_train_loader": "loader", "build_train_set": "loader",
    "build_val_loader": "loader", "check_bad_fraction": "loader", "collate": "loader",
    "epoch_position": "loader", "samples_per_epoch_per_rank": "loader",
    "class_names": "names", "readable": "names", "universal_class_names": "names",
    "write_class_names": "names", "read_class_names": "names",
    "SUPPORTED_DATASETS": "paths", "resolve_lists_root": "paths", "resolve_mseg_root": "paths",
    "ResumableSampler": "sampler", "epoch_order": "sampler",
    "IGNORE_INDEX": "taxonomy", "Taxonomy": "taxonomy", "load_taxonomy": "taxonomy",
    "EvalTransform": "transforms", "TrainTransform": "transforms", "to_tensors": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lseg.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"lseg.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
