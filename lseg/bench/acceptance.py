"""The GPU acceptance check behind ``tools/gpu_check.py``: every figure a lent GPU must give, in one bounded run.

A lent GPU comes with a few minutes of device time in all, so this is one prepared run, not an
exploration:

* cases run cheapest first: the eager bf16 grid (batch 8 and 16, checkpointing off/on) with one fp16
  row, a 200-step run through the real loader (data wait), the official evaluation protocol, then
  ``torch.compile``, whose compilation is the expensive part;
* every case is bounded in steps and seconds, and starts only when its minimum time still fits in the
  budget; a case that fails (out of memory, a compiler error) is recorded with its error and the rest go on;
* after every case ``gpu_check.md`` (tables) and ``gpu_check.json`` (everything) are rewritten, so a run
  cut short by an outer timeout still leaves all it measured.

``dry=True`` runs the same cases on the CPU with the tiny smoke config and 2 steps each (the test suite
does, so the script cannot rot); the compile cases are listed as skipped there.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from lseg import data as lseg_data
from lseg import runtime
from lseg.bench.commands import variant_rows
from lseg.bench.report import format_cell, machine_info
from lseg.bench.step import build_trainer, measure_variants
from lseg.bench.variants import Variant
from lseg.config import Config, load_config

#: Training images/s per GPU of the official LSeg code (ViT-L/16, 480 px crops), for the ratio column.
OFFICIAL_IMG_S = 1.9


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run: the real check on a GPU, or its miniature on the CPU (``dry``)."""

    config: str
    overrides: tuple[str, ...]
    batches: tuple[int, int]  # small, big
    warmup: int
    steps: int
    step_s: float  # timed part of a training-step case
    loader_steps: int
    loader_s: float
    loader_repeat: int  # the synthetic set is listed this many times, so the run stays in one epoch
    eval_images: int
    eval_s: float
    dry: bool

    @staticmethod
    def for_run(dry: bool) -> Settings:
        if dry:
            return Settings("configs/smoke.yaml", ("train.device=cpu", "data.crop_size=64", "data.base_size=72",
                                                   "data.eval_size=64", "model.text.layers=1", "data.num_workers=0"),
                            (1, 2), 1, 2, 60.0, 2, 60.0, 1, 1, 60.0, True)
        return Settings("configs/lseg_vitl16_480_mseg.yaml", ("train.device=cuda",),
                        (8, 16), 3, 30, 20.0, 200, 90.0, 20, 8, 60.0, False)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # step | loader | eval
    batch: int = 0
    variants: tuple[Variant, ...] = ()
    min_s: float = 30.0  # not started with less of the budget left


def plan(s: Settings) -> list[Case]:
    """The cases in the order they run: everything cheap first, each compilation last."""
    small, big = s.batches
    bf16, bf16_ckpt = Variant("bf16"), Variant("bf16", ckpt=True)
    cases = [Case(f"eager batch {small}", "step", small, (bf16, bf16_ckpt)),
             Case(f"eager batch {big}", "step", big, (bf16, bf16_ckpt, Variant("fp16"))),
             Case("real loader", "loader", big, (bf16,)),
             Case("official eval", "eval", 1)]
    cases += [Case(f"compile batch {b}" + (" ckpt" if ckpt else ""), "step", b,
                   (Variant("bf16", ckpt=ckpt, compile=True),), min_s=150.0)
              for b in (big, small) for ckpt in (False, True)]
    return cases


def _config(s: Settings, tmp: str, *extra: str) -> Config:
    return load_config(s.config, [*s.overrides, "model.pretrained=false", f"train.output_dir={tmp}/run", *extra])


def _step_case(s: Settings, case: Case, tmp: str, left_s: float) -> dict[str, Any]:
    cfg = _config(s, tmp, f"train.batch_size={case.batch}")
    m = measure_variants(cfg, list(case.variants), warmup=s.warmup, steps=s.steps, split=False,
                         exact_cpu_memory=False, time_limit_s=min(s.step_s, left_s / 2))
    rows, records = variant_rows(m)
    for row in rows:
        row.update(case=case.name, batch=case.batch, vs_official=row["img/s"] / OFFICIAL_IMG_S)
    return {"rows": rows, "variants": records, "flops_per_step": m.flops_per_step}


def _loader_case(s: Settings, case: Case, tmp: str, left_s: float) -> dict[str, Any]:
    """``Trainer.run_step`` on its own loader over synthetic MSeg data: what ``train/data_wait`` logs."""
    from lseg.data.synthetic import make_synthetic_mseg

    cfg = _config(s, tmp, f"train.batch_size={case.batch}", f"data.root={tmp}/data", f"data.lists_root={tmp}/lists")
    per_dataset = max(2, -(-s.loader_steps * case.batch // (len(cfg.data.train_datasets) * s.loader_repeat)))
    size = (480, 640) if not s.dry else (64, 80)
    make_synthetic_mseg(f"{tmp}/data", per_dataset, 1, size, num_classes=0, datasets=cfg.data.train_datasets,
                        mseg_root=cfg.data.mseg_root)
    for ds in cfg.data.train_datasets:  # the same files listed loader_repeat times: one long epoch
        src, dst = Path(tmp, "data/dataset_lists", ds, "list"), Path(tmp, "lists", ds, "list")
        dst.mkdir(parents=True)
        dst.joinpath("train.txt").write_text(src.joinpath("train.txt").read_text() * s.loader_repeat)
        dst.joinpath("val.txt").write_text(src.joinpath("val.txt").read_text())
    trainer = build_trainer(Variant("bf16").apply(cfg), None)
    outs, limit = [], time.monotonic() + min(s.loader_s, left_s / 2)
    while len(outs) < s.loader_steps and (not outs or time.monotonic() < limit):
        outs.append(trainer.run_step())
    skip = min(10, len(outs) // 2)  # worker start-up and first-step allocations

    def wait_pct(part: list[dict]) -> float:
        return 100 * sum(o["train/data_wait"] * o["train/step_time"] for o in part) / sum(
            o["train/step_time"] for o in part)

    row = {"case": case.name, "batch": case.batch, "steps": len(outs), "workers": cfg.data.num_workers,
           "img/s": statistics.median(o["train/img_per_s"] for o in outs[skip:]),
           "data_wait_%": wait_pct(outs[skip:]), "data_wait_all_%": wait_pct(outs),
           "peak_MB": runtime.peak_memory_mb(trainer.device)}
    return {"rows": [row], "steps": [{k: o[k] for k in ("train/step_time", "train/data_wait")} for o in outs]}


def _eval_case(s: Settings, case: Case, tmp: str, left_s: float) -> dict[str, Any]:
    """Images/s of the official protocol: scales 0.5-1.75 of a 520 long side, flip, 480² windows (bf16)."""
    from lseg.inference import infer, logits_fn, official_protocol
    from lseg.models import build_model

    cfg = _config(s, tmp)
    device = runtime.pick_device(cfg.train.device)
    model = build_model(cfg.model).to(device).eval()
    labels = lseg_data.class_names(cfg)
    fn = logits_fn(model, labels, "bf16")
    protocol = official_protocol(base_size=cfg.data.base_size, crop_size=cfg.data.crop_size)
    size = (480, 640) if not s.dry else (64, 80)
    image = torch.rand(1, 3, *size, device=device) * 2 - 1
    infer(fn, image, protocol)  # warm-up
    times, limit = [], time.monotonic() + min(s.eval_s, left_s / 2)
    while len(times) < s.eval_images and (not times or time.monotonic() < limit):
        t0 = time.perf_counter()
        infer(fn, image, protocol)
        runtime.synchronize(device)
        times.append(time.perf_counter() - t0)
    row = {"case": case.name, "images": len(times), "size": f"{size[0]}x{size[1]}", "labels": len(labels),
           "img/s": 1 / statistics.median(times), "scales": len(protocol.scales), "flip": protocol.flip}
    return {"rows": [row], "seconds": times}


_RUNNERS = {"step": _step_case, "loader": _loader_case, "eval": _eval_case}
STEP_COLUMNS = ["case", "variant", "batch", "img/s", "step_ms", "MFU_%", "TFLOP/s", "peak_MB", "vs_official"]
LOADER_COLUMNS = ["case", "batch", "steps", "workers", "img/s", "data_wait_%", "data_wait_all_%", "peak_MB"]
EVAL_COLUMNS = ["case", "images", "size", "labels", "scales", "flip", "img/s"]


def markdown(report: dict[str, Any]) -> str:
    """The human-readable summary: one table per kind of case, then what was skipped or failed."""
    def table(kind: str, columns: list[str]) -> str:
        rows = [r for c in report["cases"] if c["kind"] == kind and c["status"] == "done" for r in c["rows"]]
        if not rows:
            return "(none finished)"
        return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                         + ["| " + " | ".join(format_cell(r.get(c)) for c in columns) + " |" for r in rows])

    m = report["machine"]
    other = [f"- {c['name']}: {c['status']}" + (f" ({c['error']})" if c.get("error") else "")
             for c in report["cases"] if c["status"] != "done"]
    return "\n".join([
        f"# GPU acceptance check{' (CPU dry run)' if report['dry'] else ''}",
        "", f"{m.get('gpu', m['cpu'])}, torch {m['torch']}, {report['started']}, {report['elapsed_s']:.0f} s "
            f"of a {report['budget_s']:.0f} s budget; config {report['config']}, random weights.",
        "", "## Training steps (Trainer.run_step, synthetic batch, whole-step timing, medians)", "",
        table("step", STEP_COLUMNS),
        "", f"MFU against the dense peak of the device for the precision; vs_official = img/s / {OFFICIAL_IMG_S} "
            "(the official LSeg code's img/s per GPU).",
        "", "## Real loader (synthetic MSeg data, train/data_wait as the trainer logs it)", "",
        table("loader", LOADER_COLUMNS),
        "", "## Official evaluation protocol (bf16)", "", table("eval", EVAL_COLUMNS),
        "", "## Not run", "", "\n".join(other) or "(everything ran)", ""])


def _write(out: Path, report: dict[str, Any]) -> None:
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_check.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def run(out: Path, budget_s: float = 420.0, dry: bool = False, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every case that fits in ``budget_s`` seconds; write ``out/gpu_check.{md,json}`` after each.

    ``overrides`` (``key=value``) apply to every case's config; they are checked before any work.
    """
    s = dataclasses.replace(Settings.for_run(dry), overrides=(*Settings.for_run(dry).overrides, *overrides))
    _config(s, str(out))  # a bad override or missing taxonomy fails now, in one line
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report: dict[str, Any] = {"dry": dry, "config": s.config, "settings": dataclasses.asdict(s),
                              "budget_s": budget_s, "machine": machine_info(), "elapsed_s": 0.0,
                              "started": datetime.datetime.now().isoformat(timespec="seconds"), "cases": []}
    for case in plan(s):
        entry: dict[str, Any] = {"name": case.name, "kind": case.kind, "batch": case.batch,
                                 "variants": [v.name for v in case.variants]}
        left = budget_s - (time.monotonic() - start)
        t0 = time.monotonic()
        if dry and any(v.compile for v in case.variants):
            entry["status"] = "skipped: compile is not exercised in the CPU dry run"
        elif left < (case.min_s if not dry else 0):
            entry["status"] = f"skipped: {left:.0f} s of the budget left, the case needs {case.min_s:.0f} s"
        else:
            print(f"[gpu_check] {case.name}: {left:.0f} s of the budget left", flush=True)
            try:
                with tempfile.TemporaryDirectory(prefix="lseg-gpu-check-") as tmp:
                    entry.update(_RUNNERS[case.kind](s, case, tmp, left), status="done")
            except Exception as exc:  # a case that fails (OOM, compiler) is a result; the others still run
                traceback.print_exc()
                entry.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["seconds"] = time.monotonic() - t0
        report["cases"].append(entry)
        report["elapsed_s"] = time.monotonic() - start
        _write(out, report)
    print(markdown(report), flush=True)
    return report
