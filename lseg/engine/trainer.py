"""The training loop: one small step function and a few hooks around it.

Shape follows detectron2's trainer core (``run_step`` + hooks + separate writers) without its
registry machinery. What the loop guarantees:

* exact resume: model, optimizer, scheduler, scaler, EMA, step, epoch, sampler position and every
  rank's RNG go into each checkpoint, and the data order is a pure function of (seed, epoch, index);
* stop signals: a signal only sets a flag; ranks agree on it in the per-step all-reduce, save, and
  :meth:`Trainer.train` returns ``"preempted"`` (SIGUSR1/2: exit 75, requeue) or ``"stopped"``
  (SIGTERM: exit 143, no requeue), see :mod:`lseg.engine.preemption`;
* non-finite steps are skipped (decided on the all-reduced gradient norm, so every rank agrees) and
  the run aborts after ``train.max_nonfinite_steps`` in a row.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lseg import data as lseg_data
from lseg import faults, runtime
from lseg.checkpoint_io import load_checkpoint
from lseg.checkpoints.manager import BEST_METRIC, BEST_METRIC_HOLDOUT, CheckpointManager
from lseg.checkpoints.payload import checkpoint_payload, ema_image_state, provenance, rng_state, set_rng_state
from lseg.config import Config, ConfigError, dump_yaml, to_dict
from lseg.data.holdout import run_holdout
from lseg.distributed import DistInfo
from lseg.evaluation.scoring import eval_mode
from lseg.engine.evaluate import evaluate_label_space
from lseg.engine.loss import upsampled_segmentation_loss
from lseg.engine.per_sample import PerSampleLabels, check_label_set
from lseg.engine.optim import build_optimizer, build_scheduler
from lseg.engine.preemption import PreemptionFlag, decide
from lseg.engine.writers import ConsoleWriter, JsonlWriter, TensorboardWriter
from lseg.models import build_model
from lseg.models.backbone import check_input_sizes
from lseg.models.init_from import file_sha256, init_weights
from lseg.models.loading import first_mismatch
from lseg.models.text import LabelError
from lseg.visualize import panel

log = logging.getLogger("lseg")


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite streak, incompatible resume); one-line message."""


def ddp_options(cfg: Config) -> dict[str, Any]:
    """DDP keyword arguments from ``dist.*``. Every image parameter is used in every step (unused ones are
    not created), so ``find_unused_parameters`` stays off. ``static_graph`` is applied only where it is
    valid: PyTorch's static-graph bookkeeping breaks under ``no_sync`` accumulation (wrong or missing
    all-reduces in several releases), and it is not combined with ``torch.compile``."""
    static = cfg.dist.static_graph and cfg.train.accum_steps == 1 and not cfg.train.compile
    return {"find_unused_parameters": False, "bucket_cap_mb": cfg.dist.bucket_cap_mb,
            "gradient_as_bucket_view": cfg.dist.gradient_as_bucket_view, "static_graph": static}


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo, device: torch.device | None = None) -> None:
        """``device``: the one :func:`lseg.runtime.pick_device` made before the process group (default: pick it)."""
        self.cfg, self.info = cfg, info
        self.world = info.world_size
        self.device = device if device is not None else runtime.pick_device(cfg.train.device, info.local_rank)
        self.run_dir = Path(cfg.train.output_dir)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank

        self.class_names = lseg_data.class_names(cfg)  # the full label space: what evaluation scores
        # Held-out classes: training sees only the seen prompts, and labels go through train_lut first.
        self.holdout = run_holdout(cfg, self.class_names)
        self.train_lut = self.holdout.train_lut.to(self.device) if self.holdout.active else None
        check_label_set(cfg)  # train.label_set=per_sample: each batch's labels are its samples' classes
        self.per_sample = PerSampleLabels(cfg) if cfg.train.label_set == "per_sample" else None
        check_input_sizes(cfg.model.backbone, {"data.crop_size": cfg.data.crop_size,
                                                "data.eval_size": cfg.data.eval_size})
        self.model = build_model(cfg.model).to(self.device)
        try:
            self._encode_labels()
        except LabelError as exc:  # labels[i] is universal class i
            source = f"data.class_names_file={cfg.data.class_names_file}" if cfg.data.class_names_file else "class names"
            raise ConfigError(f"{source}: {exc}") from None
        image = self.model.image
        if self.world > 1 and self.device.type == "cuda":
            # PyTorch's SyncBatchNorm is GPU-only; on CPU (gloo) BN keeps per-process statistics.
            self.model.image = image = torch.nn.SyncBatchNorm.convert_sync_batchnorm(image)
        if cfg.train.channels_last:
            image.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(image.param_groups(), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.max_steps, cfg.optim)
        self.autocast_dtype = runtime.autocast_dtype(cfg.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=cfg.train.fp16_init_scale,
                                           enabled=cfg.train.precision == "fp16")
        self.ema = (AveragedModel(image, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
                    if cfg.train.ema_decay > 0 else None)
        # The label embeddings reach the DDP module as a plain input without autograd history, never
        # as a parameter or buffer: DDP neither broadcasts nor all-reduces them.
        self.ddp = (DDP(image, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                        **ddp_options(cfg)) if self.world > 1 else image)
        self.forward = torch.compile(self.ddp) if cfg.train.compile else self.ddp
        self.params = [p for p in image.parameters() if p.requires_grad]

        self.ckpt = CheckpointManager(self.run_dir, cfg.train.keep_last, cfg.train.keep_every,
                                      BEST_METRIC_HOLDOUT if self.holdout.active else BEST_METRIC)
        self.step = 0
        self.epoch = 0
        self.samples_in_epoch = 0  # per rank
        self.nonfinite_in_row = 0
        self.counters = {"nonfinite_steps": 0, "bad_samples": 0, "samples_seen": 0}
        self.writers: list[Any] = []
        self.tb: TensorboardWriter | None = None
        self._loader_iter = None
        # Seams for benchmarks and tests. batch_source: when set, batches come from here instead of
        # the data loader. phase_hook: called with "data", "forward", "backward", "optimizer" as each
        # phase of run_step starts and with "end" when its work is done, so a benchmark can time (and
        # synchronise) the real step instead of a copy of it; None costs one attribute test per phase.
        self.batch_source: Iterator[dict[str, torch.Tensor]] | None = None
        self.phase_hook: Callable[[str], None] | None = None
        self._window: list[dict[str, float]] = []
        self._step_times: list[float] = []
        self.flag: PreemptionFlag | None = None  # installed by train(); run_step works without it
        self.init_source: dict[str, Any] | None = None  # train.init_from's file + sha256, kept in provenance

    # ------------------------------------------------------------------ setup
    def setup_run_dir(self) -> None:
        """Rank 0: the run dir's config and class names, and the writers :meth:`log_step` feeds.

        The directory itself exists already: :func:`lseg.train.run` creates and checks it before any work.
        """
        if not self.info.is_main:
            return
        dump_yaml(self.cfg, self.run_dir / "config.yaml")
        lseg_data.write_class_names(self.cfg, self.run_dir, self.class_names)
        self.writers = [ConsoleWriter(), JsonlWriter(self.run_dir / "metrics.jsonl")]
        if self.cfg.log.tensorboard:
            self.tb = TensorboardWriter(self.run_dir / "tb")
            self.writers.append(self.tb)
            self.tb.add_text("config", "```yaml\n" + dump_yaml(self.cfg) + "```", self.step)

    def _broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def resume(self) -> str | None:
        """Load the newest valid checkpoint of the run dir (rank 0 chooses, all ranks load it); its path."""
        if self.info.is_main:
            self.ckpt.remove_stale_temp_files()  # left by a kill -9 during a save
        found = self.ckpt.latest_valid() if (self.cfg.train.resume and self.info.is_main) else None
        path = self._broadcast(str(found[0]) if found else None)
        if path is None:
            return None
        state = found[1] if found else load_checkpoint(path)  # other ranks load rank 0's choice
        problem = first_mismatch(self.model.state_dict(), state["model"])
        if problem is not None:  # a checkpoint of another architecture in this run dir
            raise TrainingError(
                f"{path} does not fit this run's model ({problem}); the run dir holds another architecture: "
                "use a new --output-dir, or train.resume=false to start over here")
        saved_world = int(state.get("provenance", {}).get("world_size", self.world))
        if saved_world != self.world and not self.cfg.train.allow_world_size_change:
            raise TrainingError(
                f"{path} was written by {saved_world} processes, this run has {self.world}; the data order "
                "and per-rank RNG cannot be reproduced. Relaunch with the same world size, or set "
                "train.allow_world_size_change=true to continue anyway (sample order is approximated)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(ema_image_state(state))
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.step = int(state["step"])
        self.epoch = int(state["sampler"]["epoch"])
        self.samples_in_epoch = int(state["sampler"]["position"])
        self.counters.update(state.get("counters", {}))
        self._encode_labels()  # weights may differ
        if saved_world == self.world:
            set_rng_state(state["rng"][self.info.rank])
        else:  # keep the global position in the epoch, re-split over the new world size
            global_pos = self.samples_in_epoch * saved_world
            per_micro = self.cfg.train.batch_size
            self.samples_in_epoch = (global_pos // self.world) // per_micro * per_micro
        self.init_source = state.get("provenance", {}).get("init_from")
        log.info("resumed from %s at step %d (epoch %d, sample %d of this rank's shard)",
                 path, self.step, self.epoch, self.samples_in_epoch)
        return path

    def init_from_weights(self) -> None:
        """``train.init_from``: the source's weights only; step, optimizer, schedule and sampler stay fresh.

        Every rank reads the same file, so all start identical; rank 0 hashes it for the provenance.
        """
        t = self.cfg.train
        state = init_weights(t.init_from, self.model.state_dict(), t.init_exclude, t.init_ema,
                             to_dict(self.cfg)["model"])
        self.model.load_state_dict({**self.model.state_dict(), **state})
        if self.ema is not None:  # the EMA starts from the weights the run starts from
            self.ema.module.load_state_dict(self.model.image.state_dict())
        self._encode_labels()
        sha = self._broadcast(file_sha256(t.init_from) if self.info.is_main else None)
        self.init_source = {"path": str(Path(t.init_from).resolve()), "sha256": sha,
                            "weights": "ema" if t.init_ema else "model", "excluded": list(t.init_exclude)}
        log.info("initialised from %s (sha256 %s, %s weights, %d of %d tensors taken); step 0, fresh optimizer",
                 self.init_source["path"], sha, self.init_source["weights"], len(state), len(self.model.state_dict()))
        self._write({}, init_from=self.init_source["path"], init_from_sha256=sha)

    def _encode_labels(self) -> None:
        """Label embeddings from the text tower's current weights (the run's prompts; per-sample classes)."""
        self.text_features = self.model.text.encode(self.holdout.train_prompts).to(self.device)
        if self.per_sample is not None:
            self.per_sample.encode(self.model.text, self.device)

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> dict[str, torch.Tensor]:
        if self.batch_source is not None:
            self.samples_in_epoch += self.cfg.train.batch_size
            return next(self.batch_source)
        while True:
            if self._loader_iter is None:
                loader = lseg_data.build_train_loader(self.cfg, self.info.rank, self.world,
                                                      epoch=self.epoch, start=self.samples_in_epoch)
                self._loader_iter = iter(loader)
            try:
                batch = next(self._loader_iter)
            except StopIteration:
                self._loader_iter = None
                self.epoch += 1
                self.samples_in_epoch = 0
                continue
            self.samples_in_epoch += self.cfg.train.batch_size
            return batch

    # ------------------------------------------------------------------ step
    def run_step(self) -> dict[str, float]:
        cfg = self.cfg
        accum = cfg.train.accum_steps
        t_start = time.perf_counter()
        data_wait = 0.0
        loss_sum = torch.zeros((), device=self.device)
        num_bad = 0
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            self._phase("data")
            t0 = time.perf_counter()
            batch = self._next_batch()
            data_wait += time.perf_counter() - t0
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device, non_blocking=True)
            if self.train_lut is not None:  # held-out pixels -> ignore, seen ids -> training indices
                labels = self.train_lut[labels]
            features = self.text_features
            if self.per_sample is not None:  # ["others"] + the batch's classes, foreground relabelled
                labels, features = self.per_sample.batch(batch["class_id"].to(self.device), labels)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            num_bad += int(batch["num_bad"].sum())
            self._phase("forward")
            sync = micro == accum - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with runtime.autocast(self.device, cfg.train.precision):
                    logit_map = self.forward(images, features, upsample=False)
                loss = upsampled_segmentation_loss(logit_map, labels, cfg.train.loss_chunks)
                self._phase("backward")
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
        self._phase("optimizer")
        self.scaler.unscale_(self.optimizer)
        if cfg.optim.clip_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip_grad_norm)
        else:  # the norm is still needed (logging, non-finite check), the rescale by 1.0 is not
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        # One small all-reduce per step carries the loss, bad-sample count and the stop-signal votes.
        votes = self.flag.votes() if self.flag else (0.0, 0.0)
        stats = torch.tensor([float(loss_sum) / accum, num_bad, *votes],
                             dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(stats)
        if torch.isfinite(grad_norm):
            self.scaler.step(self.optimizer)
            self.nonfinite_in_row = 0
            if self.ema is not None:
                self.ema.update_parameters(self.model.image)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_row += 1
            self.counters["nonfinite_steps"] += 1
            log.warning("step %d: non-finite loss/gradients (grad norm %s), step skipped (%d in a row)",
                        self.step + 1, float(grad_norm), self.nonfinite_in_row)
            if self.nonfinite_in_row >= cfg.train.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite_in_row} non-finite steps in a row at step {self.step + 1} "
                    f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); try a lower optim.lr, "
                    "train.precision=bf16/fp32 or optim.clip_grad_norm")
        self.scaler.update()
        with warnings.catch_warnings():  # a skipped optimizer step is intended, not an ordering bug
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.step += 1
        global_batch = cfg.train.batch_size * accum * self.world
        self.counters["samples_seen"] += global_batch
        self.counters["bad_samples"] += int(stats[1])
        lseg_data.check_bad_fraction(self.counters["bad_samples"], self.counters["samples_seen"], cfg)
        self._phase("end")
        step_time = time.perf_counter() - t_start
        return {"train/loss": float(stats[0]) / self.world, "train/grad_norm": float(grad_norm),
                "train/lr": self.optimizer.param_groups[0]["lr"], "train/img_per_s": global_batch / step_time,
                "train/data_wait": data_wait / step_time, "train/step_time": step_time,
                "requeue_votes": float(stats[2]), "stop_votes": float(stats[3])}

    def _phase(self, name: str) -> None:
        if self.phase_hook is not None:
            self.phase_hook(name)

    # ------------------------------------------------------------------ hooks
    def _write(self, scalars: dict[str, float], **extra: Any) -> None:
        for w in self.writers:
            w.write(self.step, scalars, {"epoch": self.epoch, "max_steps": self.cfg.train.max_steps, **extra})

    def log_step(self, out: dict[str, float]) -> None:
        """The per-step hook of :meth:`train`: averages ``run_step``'s results over ``log.every`` steps."""
        self._window.append(out)
        self._step_times.append(out["train/step_time"])
        self._step_times = self._step_times[-50:]
        if self.step % self.cfg.log.every and self.step != self.cfg.train.max_steps:
            return
        keys = ("train/loss", "train/grad_norm", "train/img_per_s", "train/data_wait")
        scalars = {k: statistics.fmean(o[k] for o in self._window) for k in keys}
        scalars["train/lr"] = out["train/lr"]
        scalars["train/mem"] = runtime.peak_memory_mb(self.device)
        scalars["train/nonfinite_steps"] = self.counters["nonfinite_steps"]
        scalars["train/bad_samples"] = self.counters["bad_samples"]
        if self.scaler.is_enabled():
            scalars["train/loss_scale"] = self.scaler.get_scale()
        eta = statistics.median(self._step_times) * (self.cfg.train.max_steps - self.step)
        self._window = []
        self._write(scalars, eta_s=eta)

    def run_eval(self) -> dict[str, float]:
        """Score every ``data.val_datasets`` on all ranks; log per-dataset and overall metrics and panels."""
        model = self.ema.module if self.ema is not None else self.model.image
        panels: list = []
        with eval_mode(model):
            if self.per_sample is not None:  # 2-way ("others", its class) per sample, as the FSS-1000 test
                scalars = self.per_sample.evaluate(model, self.cfg, self.info.rank, self.world, self.device)
            else:
                features = (self.model.text.encode(self.class_names).to(self.device) if self.holdout.active
                            else self.text_features)  # held-out classes are scored too
                scalars, panels = evaluate_label_space(self.cfg, model, features, self.class_names,
                                                       self.holdout.unseen_ids, self.info.rank, self.world,
                                                       self.device)
        self._write(scalars)
        if self.tb is not None:
            for i, (img, gt, pred) in enumerate(panels):
                self.tb.add_image(f"eval/panel_{i}", panel(img, gt, pred, self.class_names), self.step)
        return scalars

    def save(self) -> None:
        """Checkpoint everything exact resume needs; every rank contributes its RNG state."""
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if self.info.is_main:
            ema = {} if self.ema is None else {"ema": self.ema.module.state_dict(),
                                                "ema_n_averaged": self.ema.n_averaged}
            state = checkpoint_payload(
                self.model.state_dict(), to_dict(self.cfg), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), step=self.step,
                sampler={"epoch": self.epoch, "position": self.samples_in_epoch}, rng=rngs,
                counters=dict(self.counters), **ema,
                provenance={**provenance(self.world), **({"init_from": self.init_source} if self.init_source else {})})
            path = self.ckpt.save(state, self.step)
            log.info("saved %s", path)
        if self.world > 1:
            dist.barrier()  # no rank races ahead into a collective while rank 0 writes (a long write would time it out)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run to ``train.max_steps``; returns ``{"status": "completed"|"preempted"|"stopped", ...}``."""
        cfg = self.cfg
        self.flag = PreemptionFlag()
        status = None
        try:
            self.setup_run_dir()
            resumed = self.resume()
            if cfg.train.init_from and resumed:
                log.info("resuming from %s; train.init_from ignored", resumed)
            elif cfg.train.init_from:
                self.init_from_weights()
            log.info("training %s from step %d to %d on %d process(es), device %s",
                     self.run_dir, self.step, cfg.train.max_steps, self.world, self.device)
            if self.holdout.active:
                held = [self.class_names[c] for c in self.holdout.unseen_ids]
                log.info("held out %d class(es), never trained on and scored as unseen: %s", len(held), ", ".join(held))
            self.model.image.train()
            if cfg.train.freeze_bn:
                for m in self.model.image.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
            last_saved = self.step
            metrics: dict[str, float] = {}
            while self.step < cfg.train.max_steps:
                faults.maybe_fail(self.info.rank, self.step + 1)  # test-only seam, see lseg/faults.py
                out = self.run_step()
                self.log_step(out)
                status = decide(out["requeue_votes"], out["stop_votes"])
                if status is not None:
                    log.info("stop signal (%s) received: saving at step %d and %s", self.flag.received or "another rank",
                             self.step, "exiting for requeue" if status == "preempted" else "ending the run (no requeue)")
                    self.save()
                    return {"status": status, "step": self.step, "output_dir": str(self.run_dir)}
                do_eval = cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.max_steps
                if do_eval or self.step % cfg.train.ckpt_every == 0:
                    self.save()
                    last_saved = self.step
                if do_eval:
                    metrics = self.run_eval()
                    if self.info.is_main:
                        self.ckpt.record_metrics(self.step, metrics)
            if last_saved != self.step or not self.ckpt.step_files():
                self.save()
            metrics = self.run_eval()
            if self.info.is_main:
                self.ckpt.record_metrics(self.step, metrics)
            return {"status": "completed", "step": self.step, "output_dir": str(self.run_dir),
                    "metrics": {k: v for k, v in metrics.items() if "_iou/" not in k}}
        finally:
            self.flag.restore(exiting=status is not None)
            self._loader_iter = None  # loader workers ignore stop signals (lseg.data.loader): end them now
            if self.tb is not None:
                self.tb.close()

