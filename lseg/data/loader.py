"""Loaders the trainer and evaluator use; the batch contract lives here.

Batch = dict: ``image`` float32 (B,3,H,W) normalised mean = std = 0.5; ``label`` int64 (B,H,W)
ids of the label space (``data.label_space``: universal or a dataset's own classes), 255 = ignore; ``index`` int64 (B,) global sample index (after bad-sample
replacement); ``num_bad`` int64 (B,) bad files skipped to produce each sample; ``class_id`` int64 (B,)
the sample's class in its dataset's ``sample_class_list`` for one-class-per-image datasets (label 1 =
that class, 0 = "others"; see ``train.label_set=per_sample``), -1 for dense datasets.

Training position: a rank consumes exactly ``train.batch_size`` samples per micro-step and
``samples_per_epoch_per_rank(cfg, world_size)`` per epoch, so after ``m`` micro-steps the trainer
resumes with ``epoch_position(cfg, world_size, m)`` -> ``(epoch, start)`` passed to
``build_train_loader``.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import torch

from lseg.data.datasets import SegmentationSet, open_dataset
from lseg.data.errors import DataError
from lseg.data.registry import check_label_space
from lseg.data.sampler import ResumableSampler, samples_per_rank
from lseg.data.transforms import build_eval_transform, build_train_transform


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Output tensor for a batch; in a worker it lives in shared memory from the start.

    Why: a worker's batch goes to the trainer through shared memory. Writing the batch there
    directly (as torch's default collate does) saves one copy of ~25 MB per 8 x 480² batch.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    try:
        storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)  # what default_collate uses
    except AttributeError:  # private API gone: correct, one extra copy
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into the batch contract (labels widened to int64 here, once per batch)."""
    images = [s["image"] for s in samples]
    labels = [s["label"] for s in samples]
    image = _batch_buffer((len(samples), *images[0].shape), torch.float32)
    torch.stack(images, out=image)
    label = _batch_buffer((len(samples), *labels[0].shape), torch.int64)
    for i, lab in enumerate(labels):
        label[i].copy_(lab)
    return {
        "image": image,
        "label": label,
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "num_bad": torch.tensor([s["num_bad"] for s in samples], dtype=torch.int64),
        "class_id": torch.tensor([s["class_id"] for s in samples], dtype=torch.int64),
    }


def build_train_set(cfg) -> SegmentationSet:
    """The mixture of ``data.train_datasets`` with the training transform (checks paths now)."""
    d = cfg.data
    check_label_space(d)
    datasets = [open_dataset(d, name, d.train_split) for name in d.train_datasets]
    return SegmentationSet(datasets, build_train_transform(d), d.on_bad_sample, replace="resample")


def samples_per_epoch_per_rank(cfg, world_size: int, train_set: SegmentationSet | None = None) -> int:
    """Samples one rank consumes per epoch (a multiple of ``train.batch_size``)."""
    sizes = (train_set or build_train_set(cfg)).sizes
    return samples_per_rank(sum(sizes), world_size, cfg.train.batch_size)


def epoch_position(cfg, world_size: int, micro_steps_done: int) -> tuple[int, int]:
    """(epoch, start) after ``micro_steps_done`` micro-steps of ``train.batch_size`` samples."""
    per_epoch = samples_per_epoch_per_rank(cfg, world_size)
    consumed = micro_steps_done * cfg.train.batch_size
    return consumed // per_epoch, consumed % per_epoch


# Slurm signals every process of a job step, loader workers included. These signals are the
# trainer's to act on (lseg.engine.preemption); a worker that died of one would make the trainer fail
# with "DataLoader worker ... is killed by signal" instead of saving.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
_SIGWAITINFO = hasattr(signal, "sigwaitinfo")  # Linux; elsewhere workers keep torch's own handling


def _worker_init(worker_id: int) -> None:
    """Workers ignore the stop signals, except SIGTERM from their parent (the loader shutting them down).

    Workers start with the signals blocked (:class:`_Loader`), so none lands before this runs. SIGTERM
    stays blocked and is taken by a thread that ends the worker only when the parent sent it, as
    torch's own worker handler does for that case; the parent's shutdown must keep working.
    """
    parent = os.getppid()

    def take_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_sigterm, name="lseg-sigterm", daemon=True).start()
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGUSR2})


class _Loader(torch.utils.data.DataLoader):
    """Starts its workers with the stop signals blocked; one that arrives meanwhile reaches the trainer after."""

    def __iter__(self):
        if self.num_workers == 0 or not _SIGWAITINFO:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return super().__iter__()  # forks the workers, which inherit the blocked signals
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _loader(dataset, batch_sampler, num_workers: int, pin_memory: bool | None) -> torch.utils.data.DataLoader:
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return _Loader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=False, worker_init_fn=_worker_init if _SIGWAITINFO else None,
    )


def build_train_loader(cfg, rank: int, world_size: int, epoch: int, start: int = 0, *,
                       num_workers: int | None = None, pin_memory: bool | None = None,
                       train_set: SegmentationSet | None = None) -> torch.utils.data.DataLoader:
    """Loader over this rank's share of ``epoch``, skipping the ``start`` samples already consumed.

    Deterministic in (train.seed, epoch): contents do not depend on ``num_workers``. The returned
    DataLoader also carries ``samples_per_epoch_per_rank`` and ``steps_per_epoch`` attributes.
    """
    train_set = train_set or build_train_set(cfg)
    bs = cfg.train.batch_size
    sampler = ResumableSampler(train_set.sizes, cfg.data.train_ratios, cfg.train.seed, epoch,
                               rank, world_size, bs, start)
    batches = torch.utils.data.BatchSampler(sampler, bs, drop_last=True)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    loader = _loader(train_set, batches, workers, pin_memory)
    loader.samples_per_epoch_per_rank = sampler.samples_per_rank
    loader.steps_per_epoch = sampler.samples_per_rank // bs
    return loader


class _ShardKeys(torch.utils.data.Sampler):
    """Evaluation keys ``(i, 0)`` for i = rank, rank + W, ... < n: disjoint, covering, ordered."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.keys = [(i, 0) for i in range(rank, n, world_size)]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)


def build_val_loader(cfg, dataset_name: str, rank: int = 0, world_size: int = 1,
                     max_samples: int | None = None, *, num_workers: int | None = None,
                     pin_memory: bool | None = None, transform=None,
                     batch_size: int | None = None, label_space: str | None = None) -> torch.utils.data.DataLoader:
    """Sharded evaluation loader over the first ``max_samples`` of ``data.val_split``.

    ``max_samples`` None uses ``eval.max_samples`` (None there = the whole split). Unreadable
    samples (policy ``skip``) become all-ignore labels with ``num_bad`` = 1 so nothing is scored twice.
    ``transform`` (default: the eval centre crop) and ``batch_size`` (default ``eval.batch_size``)
    let the evaluation sweep score whole images at their own size, one per batch; ``label_space``
    (default ``data.label_space``) lets it read the ground truth in another space the dataset maps into.
    """
    d = cfg.data
    ds = open_dataset(d, dataset_name, d.val_split, label_space)
    val_set = SegmentationSet([ds], transform or build_eval_transform(d), d.on_bad_sample, replace="blank")
    limit = max_samples if max_samples is not None else cfg.eval.max_samples
    n = len(val_set) if limit is None else min(limit, len(val_set))
    keys = _ShardKeys(n, rank, world_size)
    batches = torch.utils.data.BatchSampler(keys, batch_size or cfg.eval.batch_size, drop_last=False)
    workers = d.num_workers if num_workers is None else num_workers
    return _loader(val_set, batches, workers, pin_memory)


def check_bad_fraction(num_bad_total: int, num_seen_total: int, cfg, min_samples: int = 1000) -> None:
    """Raise DataError when bad files exceed ``data.max_bad_fraction`` of all files read.

    ``num_seen_total``: samples delivered (sum of batch sizes); ``num_bad_total``: sum of
    ``batch["num_bad"]``. Fraction = bad / (bad + seen). Not checked before ``min_samples`` files
    were read (one corrupt file among the first few must not stop a long run), except when every
    file read so far was bad.
    """
    d = getattr(cfg, "data", cfg)
    read = num_bad_total + num_seen_total
    if read == 0 or num_bad_total == 0:
        return
    fraction = num_bad_total / read
    if fraction > d.max_bad_fraction and (read >= min_samples or num_seen_total == 0):
        raise DataError(
            f"{num_bad_total} of {read} samples read were bad ({fraction:.2%} > data.max_bad_fraction="
            f"{d.max_bad_fraction:g}); see the 'skipping bad sample' log lines, fix data.root or raise the limit"
        )


def benchmark_loader(cfg, num_workers: int, num_batches: int, *, warmup_batches: int = 2,
                     batch_size: int | None = None) -> dict[str, float | int | None]:
    """Time the training loader (decode + augment + collate) on ``cfg``'s training data.

    Returns images/s overall and per worker (the main process counts as one worker when
    ``num_workers`` is 0), with ``num_workers=0`` also images per CPU-second, plus the settings
    measured. Warm-up batches (worker start-up) are not timed. ``tools/benchmark.py data`` wraps it.
    """
    if batch_size is not None:
        cfg = _with_batch_size(cfg, batch_size)
    loader = build_train_loader(cfg, 0, 1, epoch=0, start=0, num_workers=num_workers, pin_memory=False)
    needed = warmup_batches + num_batches
    if loader.steps_per_epoch < needed:
        raise DataError(f"benchmark needs {needed} batches, the training set gives {loader.steps_per_epoch}")
    threads = torch.get_num_threads()
    if num_workers == 0:  # measure like a DataLoader worker, which runs torch single-threaded
        torch.set_num_threads(1)
    try:
        it = iter(loader)
        for _ in range(warmup_batches):
            next(it)
        images, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        for _ in range(num_batches):
            images += next(it)["image"].shape[0]
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        del it
    finally:
        torch.set_num_threads(threads)
    rate = images / seconds
    return {
        "images_per_s": rate,
        "images_per_s_per_worker": rate / max(num_workers, 1),
        # num_workers=0 only: images per CPU-second of this process, i.e. per fully used core,
        # insensitive to other jobs sharing the machine
        "images_per_cpu_s": images / cpu_seconds if num_workers == 0 and cpu_seconds > 0 else None,
        "num_workers": num_workers,
        "batch_size": cfg.train.batch_size,
        "num_images": images,
        "seconds": seconds,
        "crop_size": cfg.data.crop_size,
    }


def _with_batch_size(cfg, batch_size: int):
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = batch_size
    return cfg
