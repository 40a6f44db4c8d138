#!/usr/bin/env python
"""Evaluation sweep: checkpoints × datasets × label sets × protocols -> CSV, Markdown, TensorBoard.

    python tools/eval_sweep.py --run-dir RUN --last 3 --output-dir RUN/sweep \\
        --datasets ade20k-150-relabeled coco-panoptic-133-relabeled \\
        --label-sets universal dataset synonyms --protocols single official data.root=/data/mseg_dataset
    torchrun --nproc_per_node 8 tools/eval_sweep.py --checkpoints avg.pt --protocols official --output-dir OUT
    python tools/eval_sweep.py --run-dir RUN --protocols official --output-dir OUT --submit --partition gpu

Cells. One cell = (checkpoint, dataset, label set, protocol). Each finished cell is written at once
(``cells/<id>.json`` + its confusion matrix), then ``results.csv``, ``per_class.csv`` and
``results.md`` are rebuilt from all cell files and TensorBoard gets the cell's scalars and hparams.
A rerun skips every cell whose file exists; the id hashes everything that changes the numbers
(checkpoint path, dataset, label-set content, protocol, sample limit, weights, precision).

Label sets (``--label-sets``):
  ``universal``  the 194 readable universal names; ground truth = universal ids.
  ``dataset``    the dataset's own (relabeled) class names only, scored on that dataset's relabeled
                 ids (universal ids mapped back through the MSeg table); fewer distractor classes.
  ``synonyms``   shorthand for configs/label_sets/universal_synonyms.yaml.
  ``X.yaml``     a substitution set: ``substitutions: {universal_name: synonym | [synonyms]}``;
                 other classes keep their training name; ``mIoU_sub`` reports the substituted
                 classes alone (zero-shot transfer to unseen names).
  ``X.txt``      one prompt per universal class (194 lines, id order); ``a | b`` gives alternatives.
  Several prompts for a class are scored by the maximum of their logits.

Protocols (``--protocols``): ``single`` (long side = base size, one sliding pass, no flip),
``official`` (scales 0.5…1.75 of 520, flip, 480² windows, stride 320; raw logits summed; see
lseg/inference.py), ``whole`` (original resolution, one pass). ``--scales/--flip`` change
``official``; ``--base-size/--crop-size/--stride`` change all sliding protocols.

Metrics: mIoU, pixel accuracy, frequency-weighted IoU and per-class IoU from one dataset-level
confusion matrix (summed over ranks). A class absent from both the ground truth and the prediction
has no IoU and is left out of the mean; a class only predicted counts with IoU 0.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
if str(_REPO / "tools") not in sys.path:
    sys.path.insert(0, str(_REPO / "tools"))

from average_checkpoints import AverageError, list_run_checkpoints  # noqa: E402
from lseg.checkpoint_io import save_atomic, write_text_atomic  # noqa: E402
from lseg.cli import cli_main  # noqa: E402
from lseg.config import Config, ConfigError, add_config_args, from_dict, load_config, parse_overrides  # noqa: E402
from lseg.inference import (  # noqa: E402
    OFFICIAL_SCALES, Protocol, infer, keep_original, logits_fn, official_protocol, reduce_prompts,
    single_protocol, whole_protocol,
)
from lseg.launch_flags import add_scheduler_args, executor_parameters, make_executor  # noqa: E402
from lseg.metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics  # noqa: E402

SYNONYMS_FILE = _REPO / "configs" / "label_sets" / "universal_synonyms.yaml"
CSV_COLUMNS = [
    "checkpoint", "step", "dataset", "label_set", "protocol", "scales", "flip", "base_size", "crop_size",
    "stride", "weights", "precision", "num_images", "num_bad", "num_classes", "classes_present",
    "mIoU", "pixel_acc", "fwIoU", "mIoU_sub", "seconds", "world_size", "device", "finished_at",
    "checkpoint_path", "cell_id", "per_class_iou",
]


class SweepError(ValueError):
    """A user-caused problem (bad label set, no checkpoints, ...); printed as one line."""


# ------------------------------------------------------------------------------------------------
# Label sets
# ------------------------------------------------------------------------------------------------


@dataclass
class LabelSet:
    """Prompts given to the text encoder and how the ground truth maps onto their classes."""

    name: str
    class_names: list[str]  # per evaluated class (taxonomy identifiers, for per-class reports)
    prompts: list[str]  # text queries; several may belong to one class
    groups: list[int]  # class index of each prompt
    gt_lut: torch.Tensor  # int64[256]: universal id -> evaluated class id (255 = ignore)
    substituted: list[bool]  # per class: prompt differs from the training name
    fingerprint: str = ""  # content hash, part of the cell id

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _identity_lut(n: int) -> torch.Tensor:
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[:n] = torch.arange(n)
    return lut


def _split_alternatives(text: str) -> list[str]:
    alts = [" ".join(a.split()) for a in str(text).split("|")]
    return [a for a in alts if a]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _build(name: str, class_names: list[str], per_class: list[list[str]], lut: torch.Tensor,
           substituted: list[bool]) -> LabelSet:
    prompts, groups = [], []
    for c, alts in enumerate(per_class):
        for a in alts:
            prompts.append(a)
            groups.append(c)
    return LabelSet(name, class_names, prompts, groups, lut, substituted,
                    _fingerprint(name, class_names, per_class, lut.tolist()))


def load_substitutions(path: Path, universal: Sequence[str]) -> tuple[str, dict[int, list[str]]]:
    """(set name, universal id -> prompts) from a substitution YAML; unknown classes are an error."""
    import difflib

    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"label set file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"malformed YAML in label set {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"label set {path}: expected a mapping with 'substitutions'")
    subs = data.get("substitutions", data if "name" not in data else None)
    if not isinstance(subs, dict) or not subs:
        raise SweepError(f"label set {path}: 'substitutions' must be a non-empty mapping class -> synonym")
    by_name = {n: i for i, n in enumerate(universal)}
    by_name.update({n.replace("_", " "): i for i, n in enumerate(universal)})
    out: dict[int, list[str]] = {}
    for key, value in subs.items():
        if str(key) not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SweepError(f"label set {path}: '{key}' is not a universal class{hint}")
        values = value if isinstance(value, list) else [value]
        prompts = [p for v in values for p in _split_alternatives(v)]
        if not prompts:
            raise SweepError(f"label set {path}: empty synonym for '{key}'")
        out[by_name[str(key)]] = prompts
    return str(data.get("name") or path.stem), out


def resolve_label_set(spec: str, dataset: str, taxonomy, universal_prompts: Sequence[str]) -> LabelSet:
    """Turn a ``--label-sets`` entry into a :class:`LabelSet` for ``dataset``."""
    universal = list(taxonomy.universal)
    n = len(universal)
    if len(universal_prompts) != n:
        raise SweepError(f"expected {n} universal class names, got {len(universal_prompts)}")
    if spec == "universal":
        return _build("universal", universal, [[p] for p in universal_prompts], _identity_lut(n), [False] * n)
    if spec in ("dataset", "own"):
        classes = list(taxonomy.dataset_classes[dataset])
        table = taxonomy.table(dataset)
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
        per_class = []
        for did in range(len(classes)):
            uid = int(table[did])
            if uid == IGNORE_INDEX:
                per_class.append([classes[did].replace("_", " ")])
                continue
            if lut[uid] != IGNORE_INDEX:
                raise SweepError(f"{dataset}: classes '{classes[int(lut[uid])]}' and '{classes[did]}' share "
                                 f"universal id {uid}; the dataset label set needs a one-to-one table")
            lut[uid] = did
            per_class.append([universal_prompts[uid]])
        return _build("dataset", classes, per_class, lut, [False] * len(classes))
    path = SYNONYMS_FILE if spec == "synonyms" else Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        name, subs = load_substitutions(path, universal)
        per_class = [subs.get(i, [universal_prompts[i]]) for i in range(n)]
        return _build(name, universal, per_class, _identity_lut(n), [i in subs for i in range(n)])
    if not path.is_file():
        raise SweepError(f"unknown label set '{spec}': use universal, dataset, synonyms, a .yaml "
                         "substitution set or a .txt file with one prompt per universal class")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != n or any(not ln for ln in lines):
        raise SweepError(f"label set {path}: need {n} non-empty lines (one per universal class, id order), "
                         f"got {len(lines)}")
    per_class = [_split_alternatives(ln) for ln in lines]
    subst = [per_class[i] != [universal_prompts[i]] for i in range(n)]
    return _build(path.stem, universal, per_class, _identity_lut(n), subst)


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CkptRef:
    path: str
    label: str
    step: int | None


@dataclass(frozen=True)
class Cell:
    ckpt: CkptRef
    dataset: str
    label_set: str  # the --label-sets entry
    label_set_name: str
    protocol: Protocol
    cell_id: str

    def title(self) -> str:
        return f"{self.ckpt.label} | {self.dataset} | {self.label_set_name} | {self.protocol.name}"


_STEP_RE = re.compile(r"step_(\d+)")


def _run_checkpoints(run_dir: str) -> list:
    """The step checkpoints of a run dir, oldest first; none is an error."""
    try:
        ckpts = list_run_checkpoints(run_dir)
    except AverageError as exc:
        raise SweepError(str(exc)) from None
    if not ckpts:
        raise SweepError(f"{run_dir}: no step checkpoints found")
    return ckpts


def checkpoint_refs(args: argparse.Namespace) -> list[CkptRef]:
    """Explicit files (labelled by folder/stem) or the step checkpoints of ``--run-dir``."""
    if args.checkpoints:
        refs = []
        for p in args.checkpoints:
            path = Path(p)
            if not path.is_file():
                raise SweepError(f"checkpoint not found: {path}")
            parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            m = _STEP_RE.search(path.stem)
            refs.append(CkptRef(str(path.resolve()), f"{parent.name or '.'}/{path.stem}",
                                int(m.group(1)) if m else None))
        return refs
    ckpts = _run_checkpoints(args.run_dir)
    if args.last:
        ckpts = ckpts[-args.last:]
    run = Path(args.run_dir).resolve().name
    return [CkptRef(str(c.path.resolve()), f"{run}/{c.path.stem}", c.step) for c in ckpts]


def build_protocols(args: argparse.Namespace, cfg: Config) -> list[Protocol]:
    base = args.base_size or cfg.data.base_size
    crop = args.crop_size or cfg.data.crop_size
    common = {"window_batch": args.window_batch}
    out = []
    for name in args.protocols:
        if name == "single":
            out.append(single_protocol(base, crop, args.stride, **common))
        elif name == "official":
            out.append(official_protocol(base, crop, args.stride, scales=tuple(args.scales or OFFICIAL_SCALES),
                                         flip=args.flip, **common))
        elif name == "whole":
            out.append(whole_protocol(**common))
        else:
            raise SweepError(f"unknown protocol '{name}' (single, official, whole)")
    return out


def build_cells(args: argparse.Namespace, cfg: Config, taxonomy, universal_prompts: Sequence[str]) -> list[Cell]:
    cells = []
    refs = checkpoint_refs(args)
    protocols = build_protocols(args, cfg)
    for ref in refs:
        for ds in args.datasets or cfg.data.val_datasets:
            for spec in args.label_sets:
                ls = resolve_label_set(spec, ds, taxonomy, universal_prompts)
                for proto in protocols:
                    ident = _fingerprint(ref.path, ds, ls.fingerprint, proto.describe(), proto.pad_value,
                                         proto.size_divisor, args.max_samples, args.ema, args.precision,
                                         cfg.data.val_split)
                    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{ref.label}__{ds}__{ls.name}__{proto.name}")
                    cells.append(Cell(ref, ds, spec, ls.name, proto, f"{slug}-{ident}"))
    return cells


# ------------------------------------------------------------------------------------------------
# Evaluation of one cell
# ------------------------------------------------------------------------------------------------


def eval_set(cfg: Config, dataset: str):
    """The dataset at original resolution (normalised only); unreadable files score nothing."""
    from lseg.data.datasets import RelabeledDataset, SegmentationSet
    from lseg.data.paths import resolve_lists_root
    from lseg.data.taxonomy import load_taxonomy

    d = cfg.data
    tax = load_taxonomy(d.mseg_root)
    ds = RelabeledDataset(dataset, d.root, resolve_lists_root(d.root, d.lists_root, d.mseg_root), d.val_split, tax)
    return SegmentationSet([ds], keep_original, d.on_bad_sample, replace="blank")


def shard(n: int, rank: int, world: int) -> list[int]:
    """Images of one rank: rank, rank + world, ... (disjoint, together all of 0..n-1)."""
    return list(range(rank, n, world))


class Progress:
    """tqdm when installed (ETA over all pending images of all cells), else a plain line printer."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.total, self.done, self.t0 = enabled, total, 0, time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass
        self._last_print = 0.0

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.enabled:
            print(f"{text}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last_print > 10 or self.done == self.total):
            self._last_print = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"  {self.done}/{self.total} images, {rate:.2f} img/s, ETA {_fmt_s(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@torch.no_grad()
def evaluate_cell(model, dataset, indices: Sequence[int], labels: LabelSet, protocol: Protocol,
                  device: torch.device, precision: str, progress: Progress,
                  num_workers: int = 0) -> tuple[torch.Tensor, int, int]:
    """Local confusion matrix (not yet reduced), images scored, bad images (blanked)."""
    fn = logits_fn(model, labels.prompts, _autocast_dtype(precision))
    conf = torch.zeros(labels.num_classes, labels.num_classes, dtype=torch.int64)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=[(i, 0) for i in indices], num_workers=num_workers,
        pin_memory=device.type == "cuda")
    lut = labels.gt_lut
    images = bad = 0
    for sample in loader:
        x = sample["image"].unsqueeze(0).to(device, non_blocking=True)
        scores = reduce_prompts(infer(fn, x, protocol), labels.groups, labels.num_classes)
        pred = scores.argmax(1)[0].cpu()
        target = lut[sample["label"].long()]
        conf += confusion_matrix(pred, target, labels.num_classes)
        images += 1
        bad += int(sample["num_bad"] > 0)
        progress.update(1)
    return conf, images, bad


# ------------------------------------------------------------------------------------------------
# Results: per-cell files are the truth; tables are rebuilt from them
# ------------------------------------------------------------------------------------------------


def cell_record(cell: Cell, labels: LabelSet, conf: torch.Tensor, images: int, bad: int, seconds: float,
                step: int | None, args: argparse.Namespace, world: int, device: torch.device) -> dict:
    m = segmentation_metrics(conf)
    iou = m["per_class_iou"]
    sub = [iou[c] for c in range(labels.num_classes) if labels.substituted[c] and m["present"][c]]
    rec: dict[str, Any] = {
        "cell_id": cell.cell_id, "checkpoint": cell.ckpt.label, "checkpoint_path": cell.ckpt.path,
        "step": step, "dataset": cell.dataset, "label_set": cell.label_set_name,
        **cell.protocol.describe(),
        "weights": "ema" if args.ema else "model", "precision": args.precision,
        "num_images": images, "num_bad": bad, "num_classes": labels.num_classes,
        "classes_present": int(sum(m["present"])),
        "mIoU": m["mIoU"], "pixel_acc": m["pixel_acc"], "fwIoU": m["fwIoU"],
        "mIoU_sub": (sum(sub) / len(sub)) if sub else None,
        "seconds": round(seconds, 2), "world_size": world, "device": str(device.type),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "per_class_iou": {labels.class_names[c]: (None if math.isnan(v) else v) for c, v in enumerate(iou)},
        "gt_pixels": {labels.class_names[c]: int(v) for c, v in enumerate(conf.sum(1).tolist())},
    }
    return rec


@contextlib.contextmanager
def _locked(out_dir: Path):
    """Serialise table rebuilds of concurrent array tasks writing to one output folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _csv(rows: list[list[Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return buf.getvalue()


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def load_records(out_dir: Path) -> list[dict]:
    recs = []
    for p in sorted((out_dir / "cells").glob("*.json")):
        try:
            recs.append(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, OSError):
            print(f"warning: unreadable cell file {p} (it will be recomputed)", file=sys.stderr)
    key = lambda r: (r["dataset"], r["label_set"], r["protocol"], r["step"] if r["step"] is not None else -1,  # noqa: E731
                     r["checkpoint"])
    return sorted(recs, key=key)


def write_tables(out_dir: Path) -> list[dict]:
    """Rebuild results.csv, per_class.csv and results.md from every finished cell."""
    recs = load_records(out_dir)
    write_text_atomic(_csv([CSV_COLUMNS] + [[r.get(c) for c in CSV_COLUMNS] for r in recs]), out_dir / "results.csv")
    per_class = [["cell_id", "checkpoint", "step", "dataset", "label_set", "protocol", "class", "iou", "gt_pixels"]]
    for r in recs:
        for name, iou in r["per_class_iou"].items():
            per_class.append([r["cell_id"], r["checkpoint"], r["step"], r["dataset"], r["label_set"], r["protocol"],
                              name, iou, r.get("gt_pixels", {}).get(name)])
    write_text_atomic(_csv(per_class), out_dir / "per_class.csv")
    lines = [
        "| checkpoint | step | dataset | label set | protocol | images | mIoU | pixel acc | fwIoU | mIoU (subst.) |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        lines.append(f"| {r['checkpoint']} | {r['step'] if r['step'] is not None else ''} | {r['dataset']} | "
                     f"{r['label_set']} | {r['protocol']} | {r['num_images']} | {_pct(r['mIoU'])} | "
                     f"{_pct(r['pixel_acc'])} | {_pct(r['fwIoU'])} | {_pct(r['mIoU_sub'])} |")
    note = ("\nValues in %. mIoU averages the classes present in the ground truth or the prediction; "
            "'subst.' = substituted (synonym) classes only.\n")
    write_text_atomic("\n".join(lines) + "\n" + note, out_dir / "results.md")
    return recs


def publish(out_dir: Path, rec: dict, conf: torch.Tensor, writer) -> None:
    """Write one finished cell (JSON + confusion matrix), rebuild the tables, log to TensorBoard."""
    cells = out_dir / "cells"
    save_atomic({"confusion": conf, "classes": list(rec["per_class_iou"])}, cells / f"{rec['cell_id']}.conf.pt")
    write_text_atomic(json.dumps(rec, indent=1, sort_keys=True) + "\n", cells / f"{rec['cell_id']}.json")
    with _locked(out_dir):
        write_tables(out_dir)
    if writer is not None:
        tag = f"{rec['dataset']}/{rec['label_set']}/{rec['protocol']}"
        step = rec["step"] if rec["step"] is not None else 0
        for k in ("mIoU", "pixel_acc", "fwIoU", "mIoU_sub"):
            if rec[k] is not None and not math.isnan(rec[k]):
                writer.add_scalar(f"{tag}/{k}", rec[k], step)
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for k, v in rec.items() if k in ("checkpoint", "step", "dataset", "label_set", "protocol", "scales",
                                                    "flip", "base_size", "crop_size", "stride", "weights", "precision")}
        hparams = {k: ("" if v is None else v) for k, v in hparams.items()}
        metrics = {f"hparam/{k}": rec[k] for k in ("mIoU", "pixel_acc", "fwIoU")
                   if rec[k] is not None and not math.isnan(rec[k])}
        writer.add_hparams(hparams, metrics, run_name=rec["cell_id"])
        writer.flush()


# ------------------------------------------------------------------------------------------------
# Config and main
# ------------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> Config:
    """--config FILE, else RUN/config.yaml, else a checkpoint's own config; then the overrides.

    The model architecture always comes from each checkpoint; this config supplies the data side
    (data.root, mseg_root, splits, base/crop size defaults) and dist settings.
    """
    if args.config:
        return load_config(args.config, args.overrides)
    if args.run_dir and (Path(args.run_dir) / "config.yaml").is_file():
        return load_config(Path(args.run_dir) / "config.yaml", args.overrides)
    if args.checkpoints:
        first = args.checkpoints[0]
    else:
        first = _run_checkpoints(args.run_dir)[-1].path
    from lseg.checkpoint_io import load_checkpoint

    data = load_checkpoint(first).get("config")
    if not isinstance(data, dict):
        raise SweepError(f"{first}: no config in the checkpoint; pass --config")
    data = json.loads(json.dumps(data))  # deep copy
    for key, value in parse_overrides(list(args.overrides)):
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return from_dict(data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval_sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (training, averaged, converted)")
    src.add_argument("--run-dir", metavar="RUN", help="evaluate the step checkpoints of a run")
    p.add_argument("--last", type=int, default=None, metavar="N", help="with --run-dir: only the N newest (default all)")
    p.add_argument("--datasets", nargs="+", default=None, help="default: data.val_datasets")
    p.add_argument("--label-sets", nargs="+", default=["universal"],
                   help="universal | dataset | synonyms | FILE.yaml | FILE.txt (default universal)")
    p.add_argument("--protocols", nargs="+", default=["single"], help="single | official | whole (default single)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="official protocol scales")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="official protocol flip")
    p.add_argument("--base-size", type=int, default=None, help="long side at scale 1 (default data.base_size)")
    p.add_argument("--crop-size", type=int, default=None, help="sliding window (default data.crop_size)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default 2/3 of the crop)")
    p.add_argument("--window-batch", type=int, default=8, help="windows per forward pass (memory only)")
    p.add_argument("--max-samples", type=int, default=None, help="first N images of each dataset")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of training checkpoints")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast for the model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-workers", type=int, default=None, help="decoding workers (default data.num_workers)")
    p.add_argument("--output-dir", required=True, help="results folder (reruns skip finished cells)")
    p.add_argument("--list", action="store_true", help="print the cells and whether they are done, then exit")
    p.add_argument("--cell", action="append", default=None, help=argparse.SUPPRESS)  # one array task's cell(s)
    p.add_argument("--submit", action="store_true", help="submit one job-array task per pending cell")
    add_scheduler_args(p)
    return p


def _device(args: argparse.Namespace, local_rank: int) -> torch.device:
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SweepError("--device cuda but no CUDA device is visible")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def submit(args: argparse.Namespace, argv: list[str], pending: list[Cell], out_dir: Path) -> int:
    """One array task per pending cell; each task reruns this script on its cell (``--cell ID``)."""
    from submitit.helpers import CommandFunction

    child = [a for a in argv if a not in ("--submit", "--dry-run")]
    command = [sys.executable, str(Path(__file__).resolve()), *child, "--cell"]
    params = executor_parameters(args, "eval_sweep")
    print(f"{len(pending)} pending cell(s) -> job array; executor parameters: {params}")
    if args.dry_run:
        for c in pending:
            print(f"  would run: {' '.join(command)} {c.cell_id}")
        return 0
    executor = make_executor(args, args.logs_dir or out_dir / "submitit", "eval_sweep")
    jobs = executor.map_array(CommandFunction(command, cwd=os.getcwd()), [c.cell_id for c in pending])
    for job, c in zip(jobs, pending):
        print(f"  job {job.job_id}: {c.title()}  log {job.paths.stdout}")
    print(f"results appear in {out_dir}/results.md as tasks finish")
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from lseg import distributed
    from lseg.data.names import class_names
    from lseg.data.taxonomy import load_taxonomy

    cfg = resolve_config(args)
    out_dir = Path(args.output_dir)
    taxonomy = load_taxonomy(cfg.data.mseg_root)
    universal_prompts = class_names(cfg)
    cells = build_cells(args, cfg, taxonomy, universal_prompts)
    if args.cell:
        wanted = set(args.cell)
        cells = [c for c in cells if c.cell_id in wanted]
        if len(cells) != len(wanted):
            raise SweepError(f"--cell: {len(wanted) - len(cells)} id(s) do not match this sweep's cells")
    done = {p.stem for p in (out_dir / "cells").glob("*.json")} if (out_dir / "cells").is_dir() else set()
    pending = [c for c in cells if c.cell_id not in done]
    if args.list or (args.dry_run and not args.submit):
        for c in cells:
            print(f"{'done   ' if c.cell_id in done else 'pending'}  {c.title()}  [{c.cell_id}]")
        return 0
    if args.submit:
        return submit(args, argv, pending, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # an unwritable output dir fails before any work

    info = distributed.detect(port=cfg.dist.port)
    device = _device(args, info.local_rank)
    info = distributed.init_distributed(cfg.dist.backend, cfg.dist.timeout_s, cfg.dist.port, device.type)
    try:
        return _run_cells(args, cfg, cells, pending, done, out_dir, taxonomy, universal_prompts, info, device)
    finally:
        distributed.cleanup()


def _run_cells(args, cfg, cells, pending, done, out_dir, taxonomy, universal_prompts, info, device) -> int:
    from lseg import distributed
    from lseg.models import load_model

    main_rank = info.rank == 0
    if main_rank:
        print(f"{len(cells)} cell(s): {len(cells) - len(pending)} done, {len(pending)} to run "
              f"(world size {info.world_size}, {device})", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
    if not pending:
        if main_rank:
            write_tables(out_dir)
        return 0
    sets = {ds: eval_set(cfg, ds) for ds in {c.dataset for c in pending}}
    limit = lambda ds: len(sets[ds]) if args.max_samples is None else min(args.max_samples, len(sets[ds]))  # noqa: E731
    total = sum(len(shard(limit(c.dataset), info.rank, info.world_size)) for c in pending)
    progress = Progress(total, enabled=main_rank)
    writer = None
    if main_rank:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    model, model_key = None, None
    try:
        for k, cell in enumerate(pending, 1):
            key = (cell.ckpt.path, args.ema)
            if key != model_key:
                model = None  # free the previous one first
                model = load_model(cell.ckpt.path, device=device, use_ema=args.ema)
                model_key = key
            labels = resolve_label_set(cell.label_set, cell.dataset, taxonomy, universal_prompts)
            progress.set_description(f"[{k}/{len(pending)}] {cell.title()}")
            t0 = time.perf_counter()
            indices = shard(limit(cell.dataset), info.rank, info.world_size)
            conf, images, bad = evaluate_cell(model, sets[cell.dataset], indices, labels, cell.protocol, device,
                                              args.precision, progress, workers)
            stats = torch.tensor([images, bad], dtype=torch.int64)
            conf = distributed.all_reduce_sum(conf.to(device)).cpu()
            stats = distributed.all_reduce_sum(stats.to(device)).cpu()
            if main_rank:
                rec = cell_record(cell, labels, conf, int(stats[0]), int(stats[1]), time.perf_counter() - t0,
                                  cell.ckpt.step, args, info.world_size, device)
                publish(out_dir, rec, conf, writer)
                msg = (f"done {cell.title()}: mIoU {_pct(rec['mIoU'])}, pixAcc {_pct(rec['pixel_acc'])}, "
                       f"{rec['num_images']} images, {rec['seconds']:.1f}s")
                if progress.bar is not None:
                    progress.bar.write(msg)
                else:
                    print(msg, file=sys.stderr)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    distributed.barrier()
    if main_rank:
        print(f"results: {out_dir / 'results.md'} | {out_dir / 'results.csv'} | TensorBoard {out_dir / 'tb'}")
    return 0


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Like argparse, but ``section.key=value`` tokens are overrides wherever they stand.

    Without this, ``--scales 0.5 1.0 data.root=X`` would feed the override to ``--scales``.
    """
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    args = build_parser().parse_args([a for a in argv if not _OVERRIDE.match(a)])
    args.overrides = overrides + list(args.overrides)
    return args


@cli_main(SweepError)
def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.last is not None and not args.run_dir:
        raise SweepError("--last needs --run-dir")
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
