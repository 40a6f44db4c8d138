"""``tools/eval_zeroshot.py``: a checkpoint on a benchmark's folds, one or both protocols, here or as a job array.

Fold models: a checkpoint path holding ``{fold}`` names one file per fold
(``pascal_fold{fold}.pt``), as the official zoo has one model per PASCAL/COCO fold; tables then
group the folds under that pattern and average them.

Here: every rank of a ``torchrun``/``srun`` launch (or one process) scores its share of each fold's
episodes; rank 0 writes each finished fold (``OUT/folds/*.json``), rebuilds ``results.csv``,
``per_class.csv`` and ``results.md`` and logs TensorBoard scalars (``OUT/tb``). ``submit``: one
Slurm array task per fold through the shared scheduler flags, each rerunning the same command with
``--folds F``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from lseg import distributed, runtime
from lseg.config import load_config
from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.benchmarks import IMAGE_SIZE, Benchmark, check_folds, check_label_names, get_benchmark
from lseg.zeroshot.protocol import PROTOCOLS, episodes_for, score_fold
from lseg.zeroshot.readers import check_layout
from lseg.zeroshot.report import fold_record, publish

#: Default time limit of one array task (one fold, both protocols), in minutes.
SUBMIT_TIMEOUT_MIN = 240


@dataclass(frozen=True)
class ZeroShotSettings:
    """What ``tools/eval_zeroshot.py`` was asked. ``rerun``: the command line (array tasks append
    ``--folds F``); ``scheduler``: the parsed :func:`lseg.launch.add_scheduler_args` flags."""

    benchmark: str
    checkpoint: str
    data_root: str
    output_dir: str
    folds: Sequence[int] | None = None
    protocols: Sequence[str] = ("official",)
    label_file: str | None = None
    image_size: int = IMAGE_SIZE
    max_episodes: int | None = None
    precision: str = "fp32"
    device: str = "auto"
    ema: bool = False
    overrides: Sequence[str] = ()
    submit: bool = False
    dry_run: bool = False
    rerun: Sequence[str] = ()
    scheduler: Any = None
    logs_dir: str | None = None


def class_texts(bench: Benchmark, label_file: str | None) -> tuple[str, ...]:
    """The official label file's names, or a user's file (one name per line) with the right class count."""
    if label_file is None:
        return bench.class_names
    try:
        names = [line.strip() for line in Path(label_file).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise ZeroShotError(f"--label-file {label_file}: not found") from None
    while names and not names[-1]:
        names.pop()
    return check_label_names(bench, names, f"--label-file {label_file}")


def fold_checkpoint(pattern: str, fold: int) -> Path:
    """The checkpoint of a fold: ``{fold}`` in the path is replaced by the fold number."""
    return Path(pattern.replace("{fold}", str(fold)))


def run_zeroshot(s: ZeroShotSettings) -> int:
    """Validate everything cheap first (benchmark, folds, label file, data layout, checkpoint), then
    submit or score; returns the exit status."""
    bench = get_benchmark(s.benchmark)
    folds = check_folds(bench, s.folds)
    unknown = [p for p in s.protocols if p not in PROTOCOLS]
    if unknown:
        raise ZeroShotError(f"unknown protocol '{unknown[0]}' ({', '.join(PROTOCOLS)})")
    runtime.autocast_dtype(s.precision)
    if s.image_size % 32:
        raise ZeroShotError(f"--image-size {s.image_size} must be a multiple of 32 (official: {IMAGE_SIZE})")
    names = class_texts(bench, s.label_file)
    root = check_layout(bench, s.data_root)
    for f in folds:
        if not fold_checkpoint(s.checkpoint, f).is_file():
            raise ZeroShotError(f"checkpoint not found: {fold_checkpoint(s.checkpoint, f)}")
    cfg = load_config(None, list(s.overrides))
    if s.submit:
        return submit(s, folds)
    out_dir = Path(s.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = distributed.detect(port=cfg.dist.port)
    device = runtime.pick_device(s.device, info.local_rank)
    info = distributed.init_distributed(cfg.dist.backend, cfg.dist.timeout_s, cfg.dist.port, device.type, info)
    try:
        return _score(s, bench, folds, names, root, info, device)
    finally:
        distributed.cleanup()


def _score(s: ZeroShotSettings, bench: Benchmark, folds: list[int], names: Sequence[str], root: Path,
           info: distributed.DistInfo, device: torch.device) -> int:
    from lseg.evaluation.reports import Progress
    from lseg.models import load_model

    main = info.rank == 0
    out_dir = Path(s.output_dir)
    todo = [(f, p) for f in folds for p in s.protocols]
    total = sum(len(episodes_for(p, bench, f, root)[:s.max_episodes]) for f, p in todo)
    label = f"{Path(s.checkpoint).parent.name or '.'}/{Path(s.checkpoint).stem}"
    model, model_path = None, None
    progress = Progress((total + info.world_size - 1) // info.world_size, enabled=main)
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    try:
        for fold, protocol in todo:
            progress.set_description(f"{bench.name} fold {fold} {protocol}")
            if fold_checkpoint(s.checkpoint, fold) != model_path:
                model = None  # free the previous fold's model first
                model_path = fold_checkpoint(s.checkpoint, fold)
                model = load_model(model_path, device=device, use_ema=s.ema)
            result = score_fold(model, bench, fold, root, protocol, names, device, image_size=s.image_size,
                                precision=s.precision, rank=info.rank, world_size=info.world_size,
                                max_episodes=s.max_episodes, on_episode=progress.update)
            if main:
                rec = fold_record(result, checkpoint=label, checkpoint_path=str(model_path.resolve()),
                                  image_size=s.image_size, max_episodes=s.max_episodes, precision=s.precision,
                                  world_size=info.world_size, weights="ema" if s.ema else "model")
                publish(out_dir, rec, writer)
                progress.write(f"{bench.name} fold {fold} {protocol}: mIoU {100 * result.mIoU:.2f} "
                               f"FB-IoU {100 * result.FB_IoU:.2f} ({result.episodes} episodes)")
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    distributed.barrier()
    if main:
        print(f"results: {out_dir / 'results.md'} | {out_dir / 'results.csv'} | TensorBoard {out_dir / 'tb'}")
    return 0


def submit(s: ZeroShotSettings, folds: list[int]) -> int:
    """One array task per fold; each reruns this command with ``--folds F`` (a later flag wins)."""
    from submitit.helpers import CommandFunction

    from lseg.launch import check_scheduler_args, make_executor, sbatch_script

    check_scheduler_args(s.scheduler)
    command = [a for a in s.rerun if a not in ("--submit", "--dry-run")] + ["--folds"]
    folder = Path(s.logs_dir) if s.logs_dir else Path(s.output_dir) / "submitit"
    print(f"{len(folds)} fold(s) of {s.benchmark} -> job array")
    if s.dry_run:
        print(sbatch_script(s.scheduler, folder, "eval_zeroshot"))
        for f in folds:
            print(f"  would run: {' '.join(command)} {f}")
        return 0
    executor = make_executor(s.scheduler, folder, "eval_zeroshot")
    jobs = executor.map_array(CommandFunction(command, cwd=os.getcwd()), [str(f) for f in folds])
    for job, f in zip(jobs, folds):
        print(f"  job {job.job_id}: fold {f}  log {job.paths.stdout}")
    print(f"results appear in {s.output_dir}/results.md as tasks finish")
    return 0
