"""Locating pretrained timm / open_clip weights for machines without network access.

Compute nodes of most clusters cannot reach the Hugging Face Hub, and a download attempt there can
hang on a firewalled socket. So weights are looked up in a local Hugging Face cache first (the
layout ``hf_hub_download`` writes, filled on a login node by ``tools/prepare_weights.py``), and the
model itself never downloads. Every failure is one line that names the cache directory and the
command that fills it. The ResNet-101 encoder's ImageNet weights are torchvision's (IMAGENET1K_V1,
resnet101-63fe2227.pth), read from their Hub copy ``timm/resnet101.tv_in1k`` through the same cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREPARE_CMD = "python tools/prepare_weights.py --cache-dir {dir}"


class WeightsError(RuntimeError):
    """Pretrained weights are not available locally (and could not be fetched)."""


@dataclass(frozen=True)
class WeightSource:
    """One weight file on the Hugging Face Hub: a repo and the file names to try, best first."""

    what: str  # human-readable, for messages
    repo_id: str
    filenames: tuple[str, ...]


def cache_dir_for(weights_cache: str | None) -> str:
    """The directory used as Hugging Face cache: the configured one, else the hub's default."""
    if weights_cache:
        return str(Path(weights_cache).expanduser())
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def offline() -> bool:
    """True when the environment forbids network access (read at call time, not import time)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def timm_source(backbone: str) -> WeightSource:
    """Where timm keeps the default pretrained weights of ``backbone`` (``name[.tag]``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm has no Hugging Face Hub weights for backbone '{backbone}'")
    repo = cfg.hf_hub_id.partition("@")[0]
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
    return WeightSource(f"timm '{backbone}'", repo, names)


def open_clip_source(arch: str, tag: str) -> WeightSource:
    """Where open_clip keeps the ``arch``/``tag`` checkpoint on the Hugging Face Hub."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        raise WeightsError(f"open_clip has no Hugging Face Hub weights for '{arch}' pretrained='{tag}'")
    repo, filename = os.path.split(hub)  # "org/name/" -> default file names, "org/name/file" -> that file
    if filename:
        names: tuple[str, ...] = (filename,)
    else:
        names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return WeightSource(f"open_clip '{arch}' ({tag})", repo, names)


def read_weights_file(path: str) -> dict:
    """A state dict from a ``.safetensors`` file or a torch file (tensors only, never arbitrary pickles)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def find_cached(src: WeightSource, cache_dir: str) -> str | None:
    """Path of the first of ``src.filenames`` present in ``cache_dir``, without any network call."""
    from huggingface_hub import try_to_load_from_cache

    for name in src.filenames:
        path = try_to_load_from_cache(src.repo_id, name, cache_dir=cache_dir)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def download(src: WeightSource, cache_dir: str) -> str:
    """Fetch ``src`` into ``cache_dir`` (login node); the first file name the repo has wins."""
    from huggingface_hub import hf_hub_download

    errors = []
    for name in src.filenames:
        try:
            return hf_hub_download(src.repo_id, name, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; we report the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{name}: {first[:160]}")
    raise WeightsError(f"could not download {src.what} from {src.repo_id}: " + "; ".join(errors))


def locate(src: WeightSource, weights_cache: str | None) -> str:
    """Local path of ``src`` from the cache; never downloads (one-line error naming the fix instead).

    Model construction runs on every rank of a job, often on nodes without network, where a
    download attempt costs a minute of retries or hangs; fetching is tools/prepare_weights.py's job.
    """
    cache_dir = cache_dir_for(weights_cache)
    path = find_cached(src, cache_dir)
    if path is not None:
        return path
    raise WeightsError(
        f"pretrained weights for {src.what} ({src.repo_id}) not found in cache dir {cache_dir}; "
        f"fetch them on a machine with network: {PREPARE_CMD.format(dir=cache_dir)}"
    )


def prepare_cache(model_cfg, cache_dir: str, echo=print) -> str:
    """Fill ``cache_dir`` with the backbone and text weights ``model_cfg`` needs; returns the cache dir.

    Run on a login node: compute nodes then only :func:`locate` files, so a job never waits on the
    network. Files already cached are left alone, so a rerun is cheap.
    """
    from lseg.models.backbone import backbone_spec

    cache_dir = cache_dir_for(cache_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    image_src = timm_source(backbone_spec(model_cfg.backbone).weights)
    for src in (image_src, open_clip_source(model_cfg.text.arch, model_cfg.text.pretrained)):
        path = find_cached(src, cache_dir)
        if path is not None:
            echo(f"cached     {src.what}: {path}")
            continue
        if offline():
            raise WeightsError(f"{src.what} is not in {cache_dir} and HF_HUB_OFFLINE is set; "
                               "run this on a machine with network access")
        echo(f"fetching   {src.what} from {src.repo_id} ...")
        echo(f"downloaded {src.what}: {download(src, cache_dir)}")
    return cache_dir
