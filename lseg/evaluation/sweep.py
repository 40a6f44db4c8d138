"""Evaluation sweeps: checkpoints × datasets × label sets × protocols, one cell at a time.

One cell = (checkpoint, dataset, label set, protocol). Each finished cell is written at once
(``cells/<id>.json`` + its confusion matrix, see :mod:`lseg.evaluation.reports`); a rerun skips
every cell whose file exists. The cell id hashes everything that changes the numbers (checkpoint
path, dataset, label-set content, protocol, sample limit, weights, precision, split), so changing
e.g. the scales evaluates new cells next to the old ones.

Cells run here (all ranks of a ``torchrun``/``srun`` launch share each cell's images and sum their
confusion matrices) or as a submitit job array, one task per pending cell, each task rerunning the
same command for its cell.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lseg import distributed, runtime
from lseg.checkpoints import list_run_checkpoints, select_last, step_of
from lseg.config import Config, load_config
from lseg.data import DataError, label_space
from lseg.data.holdout import resolve_holdout, unseen_classes
from lseg.evaluation import SweepError
from lseg.evaluation.label_sets import LabelSet, fingerprint, resolve_label_set
from lseg.evaluation.reports import Progress, cell_record, done_cells, pct, publish, write_tables
from lseg.evaluation.scoring import PredictFn, score
from lseg.inference import (
    OFFICIAL_SCALES, Protocol, infer, keep_original, logits_fn, official_protocol, reduce_prompts, single_protocol,
    whole_protocol,
)

PROTOCOLS = ("single", "official", "whole")
#: Default time limit of one array task (one cell), in minutes.
SUBMIT_TIMEOUT_MIN = 240
#: A sample limit of "no limit" for the loader (whose own default is ``eval.max_samples``).
_ALL = sys.maxsize


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep is asked to do; ``tools/eval_sweep.py`` fills it from its flags.

    ``rerun``: the command line that reproduces this sweep (array tasks append ``--cell ID``);
    ``scheduler``: the parsed flags of :func:`lseg.launch.add_scheduler_args`, handed to the
    executor factory on ``submit``; ``logs_dir``: submitit's folder (default ``OUT/submitit``).
    """

    output_dir: str
    checkpoints: Sequence[str] = ()
    run_dir: str | None = None
    last: int | None = None
    config: str | None = None
    overrides: Sequence[str] = ()
    datasets: Sequence[str] | None = None
    label_sets: Sequence[str] = ("universal",)
    protocols: Sequence[str] = ("single",)
    scales: Sequence[float] | None = None
    flip: bool = True
    base_size: int | None = None
    crop_size: int | None = None
    stride: int | None = None
    window_batch: int = 8
    max_samples: int | None = None
    ema: bool = False
    precision: str = "fp32"
    device: str = "auto"
    num_workers: int | None = None
    list_only: bool = False
    cells: Sequence[str] | None = None
    submit: bool = False
    dry_run: bool = False
    rerun: Sequence[str] = ()
    scheduler: Any = None
    logs_dir: str | None = None

    def __post_init__(self) -> None:
        if bool(self.checkpoints) == bool(self.run_dir):
            raise SweepError("give exactly one of --checkpoints and --run-dir")
        if self.last is not None and not self.run_dir:
            raise SweepError("--last needs --run-dir")
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise SweepError(f"unknown protocol '{unknown[0]}' ({', '.join(PROTOCOLS)})")
        runtime.autocast_dtype(self.precision)


@dataclass(frozen=True)
class CkptRef:
    path: str
    label: str  # short name in tables: <run or folder>/<file stem>
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


@dataclass
class Plan:
    """The cells of a sweep, which are still to run, and the label sets they use."""

    cells: list[Cell]
    pending: list[Cell]
    label_sets: dict[tuple[str, str], LabelSet] = field(default_factory=dict)  # (spec, dataset) -> set


def checkpoint_refs(s: SweepSettings) -> list[CkptRef]:
    """Explicit files (labelled by folder/stem) or the step checkpoints of the run dir (``last`` newest)."""
    if s.checkpoints:
        refs = []
        for p in s.checkpoints:
            path = Path(p)
            if not path.is_file():
                raise SweepError(f"checkpoint not found: {path}")
            parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            refs.append(CkptRef(str(path.resolve()), f"{parent.name or '.'}/{path.stem}", step_of(path)))
        return refs
    ckpts = list_run_checkpoints(s.run_dir)
    if s.last is not None:
        ckpts = select_last(ckpts, s.last)
    run = Path(s.run_dir).resolve().name
    return [CkptRef(str(c.path.resolve()), f"{run}/{c.path.stem}", c.step) for c in ckpts]


def build_protocols(s: SweepSettings, cfg: Config) -> list[Protocol]:
    """The requested protocols; sizes default to the config's ``data.base_size`` / ``data.crop_size``."""
    base = s.base_size or cfg.data.base_size
    crop = s.crop_size or cfg.data.crop_size
    make = {
        "single": lambda: single_protocol(base, crop, s.stride, window_batch=s.window_batch),
        "official": lambda: official_protocol(base, crop, s.stride, scales=tuple(s.scales or OFFICIAL_SCALES),
                                              flip=s.flip, window_batch=s.window_batch),
        "whole": lambda: whole_protocol(window_batch=s.window_batch),
    }
    return [make[name]() for name in s.protocols]


def plan_cells(s: SweepSettings, cfg: Config, taxonomy, universal_prompts: Sequence[str]) -> Plan:
    """Every cell of the sweep (restricted to ``s.cells`` when given) and those not yet done."""
    plan = Plan([], [])
    refs = checkpoint_refs(s)
    protocols = build_protocols(s, cfg)
    own: dict[str, tuple] = {}
    for ref in refs:
        for ds in s.datasets or cfg.data.val_datasets:
            if ds not in own:
                own[ds] = dataset_classes(cfg, ds, taxonomy)
            for spec in s.label_sets:
                ls = plan.label_sets.get((spec, ds)) or resolve_label_set(spec, ds, taxonomy, universal_prompts,
                                                                          *own[ds])
                plan.label_sets[(spec, ds)] = ls
                for proto in protocols:
                    ident = fingerprint(ref.path, ds, ls.fingerprint, proto.describe(), proto.pad_value,
                                        proto.size_divisor, s.max_samples, s.ema, s.precision, cfg.data.val_split)
                    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{ref.label}__{ds}__{ls.name}__{proto.name}")
                    plan.cells.append(Cell(ref, ds, spec, ls.name, proto, f"{slug}-{ident}"))
    if s.cells:
        wanted = set(s.cells)
        plan.cells = [c for c in plan.cells if c.cell_id in wanted]
        if len(plan.cells) != len(wanted):
            raise SweepError(f"--cell: {len(wanted) - len(plan.cells)} id(s) do not match this sweep's cells")
    done = done_cells(Path(s.output_dir))
    plan.pending = [c for c in plan.cells if c.cell_id not in done]
    return plan


def dataset_classes(cfg: Config, dataset: str, taxonomy) -> tuple[Any, tuple[str, ...]]:
    """(own label space or None for MSeg's relabeled sets, label spaces ``dataset`` maps into)."""
    from lseg.data import label_space, registry

    spec = registry.get(dataset)
    return (None if dataset in taxonomy.tables else label_space(cfg, dataset)), tuple(spec.mappings)


def resolve_config(s: SweepSettings) -> Config:
    """``--config FILE``, else ``RUN/config.yaml``, else the first checkpoint's own config; then overrides.

    The model always comes from each checkpoint; this config supplies the data side (data.root,
    mseg_root, splits, base/crop size defaults) and the dist settings.
    """
    if s.config:
        return load_config(s.config, list(s.overrides))
    if s.run_dir and (Path(s.run_dir) / "config.yaml").is_file():
        return load_config(Path(s.run_dir) / "config.yaml", list(s.overrides))
    first = s.checkpoints[0] if s.checkpoints else list_run_checkpoints(s.run_dir)[-1].path
    from lseg.checkpoint_io import load_checkpoint

    data = load_checkpoint(first).get("config")
    if not isinstance(data, dict):
        raise SweepError(f"{first}: no config in the checkpoint; pass --config")
    return load_config(data, list(s.overrides))


def protocol_predictor(model: torch.nn.Module, labels: LabelSet, protocol: Protocol, precision: str) -> PredictFn:
    """Class ids by ``protocol`` for the label set's prompts (max over the prompts of a class)."""
    fn = logits_fn(model, labels.prompts, precision)

    def predict(images: torch.Tensor) -> torch.Tensor:
        return reduce_prompts(infer(fn, images, protocol), labels.groups, labels.num_classes).argmax(1)
    return predict


def run_sweep(s: SweepSettings) -> int:
    """List, submit or run the sweep's pending cells; returns the exit status."""
    from lseg.data.names import universal_class_names
    from lseg.data.taxonomy import load_taxonomy

    cfg = resolve_config(s)
    taxonomy = load_taxonomy(cfg.data.mseg_root)
    overrides = cfg.data.class_names_file if cfg.data.label_space == "universal" else None
    plan = plan_cells(s, cfg, taxonomy, universal_class_names(cfg.data.mseg_root, overrides))
    out_dir = Path(s.output_dir)
    if s.list_only or (s.dry_run and not s.submit):
        pending = {c.cell_id for c in plan.pending}
        for c in plan.cells:
            print(f"{'pending' if c.cell_id in pending else 'done   '}  {c.title()}  [{c.cell_id}]")
        return 0
    if s.submit:
        return submit(s, plan.pending, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # an unwritable output dir fails before any work
    info = distributed.detect(port=cfg.dist.port)
    device = runtime.pick_device(s.device, info.local_rank)
    info = distributed.init_distributed(cfg.dist.backend, cfg.dist.timeout_s, cfg.dist.port, device.type, info)
    try:
        return _score_pending(s, cfg, plan, info, device)
    finally:
        distributed.cleanup()


def submit(s: SweepSettings, pending: list[Cell], out_dir: Path) -> int:
    """One array task per pending cell; each task reruns the sweep's command on its cell (``--cell ID``)."""
    from submitit.helpers import CommandFunction

    from lseg.launch import check_scheduler_args, make_executor, sbatch_script

    check_scheduler_args(s.scheduler)
    command = [a for a in s.rerun if a not in ("--submit", "--dry-run")] + ["--cell"]
    folder = Path(s.logs_dir) if s.logs_dir else out_dir / "submitit"
    if not pending:
        print(f"every cell is done: nothing to submit; results in {out_dir}/results.md")
        return 0
    print(f"{len(pending)} pending cell(s) -> job array")
    if s.dry_run:
        print(sbatch_script(s.scheduler, folder, "eval_sweep"))
        for c in pending:
            print(f"  would run: {' '.join(command)} {c.cell_id}")
        return 0
    executor = make_executor(s.scheduler, folder, "eval_sweep")
    jobs = executor.map_array(CommandFunction(command, cwd=os.getcwd()), [c.cell_id for c in pending])
    for job, c in zip(jobs, pending):
        print(f"  job {job.job_id}: {c.title()}  log {job.paths.stdout}")
    print(f"results appear in {out_dir}/results.md as tasks finish")
    return 0


def cell_unseen(held: Sequence[str], cfg: Config, labels: LabelSet) -> list[int] | None:
    """The label set's classes a checkpoint was trained without (its config's ``data.holdout_classes``),
    found by name in the label space the set reads its ground truth in; None when the checkpoint held
    out nothing, or when a held-out class has no namesake there (no seen/unseen split is claimed)."""
    if not held:
        return None
    space = label_space(cfg, labels.space)
    try:
        ids = resolve_holdout(list(space.prompts), held, list(space.classes), space.name).unseen_ids
    except DataError as exc:
        print(f"warning: {labels.name} on {labels.space}: no seen/unseen scores ({exc})", file=sys.stderr)
        return None
    return unseen_classes(labels.gt_lut, ids)


def _score_pending(s: SweepSettings, cfg: Config, plan: Plan, info, device: torch.device) -> int:
    from lseg.checkpoint_io import load_checkpoint
    from lseg.data import build_val_loader
    from lseg.models import load_model

    main_rank = info.rank == 0
    out_dir = Path(s.output_dir)
    if main_rank:
        print(f"{len(plan.cells)} cell(s): {len(plan.cells) - len(plan.pending)} done, {len(plan.pending)} to run "
              f"(world size {info.world_size}, {device})", file=sys.stderr)
    if not plan.pending:
        if main_rank:
            write_tables(out_dir)
        return 0
    workers = cfg.data.num_workers if s.num_workers is None else s.num_workers

    def key(c: Cell) -> tuple[str, str]:  # each label set reads the ground truth in its own label space
        return c.dataset, plan.label_sets[(c.label_set, c.dataset)].space

    loaders = {(ds, space): build_val_loader(cfg, ds, info.rank, info.world_size,
                                             max_samples=_ALL if s.max_samples is None else s.max_samples,
                                             num_workers=workers, pin_memory=device.type == "cuda",
                                             transform=keep_original, batch_size=1, label_space=space)
               for ds, space in dict.fromkeys(key(c) for c in plan.pending)}
    progress = Progress(sum(len(loaders[key(c)]) for c in plan.pending), enabled=main_rank)
    writer = None
    if main_rank:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    model, model_path = None, None
    try:
        for k, cell in enumerate(plan.pending, 1):
            if cell.ckpt.path != model_path:
                model = None  # free the previous one first
                ckpt = load_checkpoint(cell.ckpt.path)
                model = load_model(cell.ckpt.path, device=device, use_ema=s.ema, checkpoint=ckpt)
                held = (ckpt["config"].get("data") or {}).get("holdout_classes") or []
                model_path, ckpt = cell.ckpt.path, None
            labels = plan.label_sets[(cell.label_set, cell.dataset)]
            progress.set_description(f"[{k}/{len(plan.pending)}] {cell.title()}")
            t0 = time.perf_counter()
            result = score(protocol_predictor(model, labels, cell.protocol, s.precision), loaders[key(cell)],
                           labels.num_classes, device, target_map=labels.gt_lut, on_batch=progress.update)
            if main_rank:
                rec = cell_record(
                    result.confusion, labels.class_names, labels.substituted, result.images, result.bad,
                    time.perf_counter() - t0, unseen=cell_unseen(held, cfg, labels),
                    cell_id=cell.cell_id, checkpoint=cell.ckpt.label,
                    checkpoint_path=cell.ckpt.path, step=cell.ckpt.step, dataset=cell.dataset,
                    label_set=cell.label_set_name, **cell.protocol.describe(), weights="ema" if s.ema else "model",
                    precision=s.precision, world_size=info.world_size, device=device.type)
                publish(out_dir, rec, result.confusion, writer)
                progress.write(f"done {cell.title()}: mIoU {pct(rec['mIoU'])}, pixAcc {pct(rec['pixel_acc'])}, "
                               f"{rec['num_images']} images, {rec['seconds']:.1f}s")
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    distributed.barrier()
    if main_rank:
        print(f"results: {out_dir / 'results.md'} | {out_dir / 'results.csv'} | TensorBoard {out_dir / 'tb'}")
    return 0

