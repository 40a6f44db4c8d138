"""Frozen CLIP text tower (open_clip) that turns label names into unit-length embeddings.

Only the text half of CLIP is built: the image tower of ViT-B/32 would be 88 M parameters that
LSeg never runs. The tower is frozen (official LSeg never optimises it), kept in eval mode whatever
its parent does, and label embeddings are cached per label tuple because they cannot change while
the weights do not; loading weights clears the cache.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lseg.config import ConfigError, TextConfig


class LabelError(ValueError):
    """A label list the text encoder cannot take (empty, blank or too long); names the label's index.

    A ValueError subclass so existing callers keep working, and its own class so every CLI can
    report it as a one-line user error (lseg.cli) instead of a traceback.
    """


def text_tower_config(cfg: TextConfig) -> tuple[int, dict, bool]:
    """(embed_dim, open_clip text_cfg dict, quick_gelu) for ``cfg.arch`` with the overrides applied."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    model_cfg = open_clip.get_model_config(cfg.arch)
    if model_cfg is None or "text_cfg" not in model_cfg:
        raise ConfigError(f"model.text.arch: unknown open_clip model '{cfg.arch}'")
    text_cfg = dict(model_cfg["text_cfg"])
    if text_cfg.get("hf_model_name"):
        raise ConfigError(f"model.text.arch: '{cfg.arch}' uses a Hugging Face text model; only CLIP "
                          "text transformers are supported")
    for key in ("width", "layers", "heads"):
        value = getattr(cfg, key)
        if value is not None:
            text_cfg[key] = value
    embed_dim = cfg.embed_dim if cfg.embed_dim is not None else model_cfg["embed_dim"]
    # OpenAI's CLIP uses QuickGELU; open_clip records that on the pretrained tag (or a -quickgelu arch).
    quick_gelu = bool(model_cfg.get("quick_gelu", False)
                      or get_pretrained_cfg(cfg.arch, cfg.pretrained).get("quick_gelu", False))
    if text_cfg["width"] % text_cfg["heads"]:
        raise ConfigError(f"model.text: width {text_cfg['width']} is not divisible by heads {text_cfg['heads']}")
    return embed_dim, text_cfg, quick_gelu


def text_state_dict_from_clip(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the text-tower entries of a full open_clip/OpenAI CLIP state dict (same names), as fp32."""
    drop_prefixes = ("visual.",)
    drop_keys = {"logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size"}
    return {k: v.float() if v.is_floating_point() else v for k, v in clip_state.items()
            if not k.startswith(drop_prefixes) and k not in drop_keys}


def _clear_cache_after_load(module: "TextEncoder", incompatible_keys: object) -> None:
    module.clear_cache()


class TextEncoder(nn.Module):
    """``encode(labels) -> (N, D)`` L2-normalised fp32 label embeddings from a frozen CLIP text tower."""

    def __init__(self, cfg: TextConfig, pretrained_file: str | None = None) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        embed_dim, text_cfg, quick_gelu = text_tower_config(cfg)
        self.tower = _build_text_tower(embed_dim, text_cfg, quick_gelu=quick_gelu, cast_dtype=None)
        self.tokenizer = open_clip.get_tokenizer(cfg.arch)
        self.context_length: int = int(text_cfg.get("context_length", 77))
        self.embed_dim = embed_dim
        if pretrained_file is not None:
            from open_clip.factory import load_state_dict

            state = text_state_dict_from_clip(load_state_dict(pretrained_file))
            self.tower.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.train(False)
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}
        # Any load_state_dict reaching this module (also via the parent) makes cached embeddings stale.
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Always eval: the tower is frozen, so train-mode behaviour (dropout) must never switch on."""
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _check_labels(self, labels: Sequence[str]) -> list[str]:
        if isinstance(labels, str):
            raise LabelError(f"labels must be a list of strings, got the single string {labels!r}")
        labels = list(labels)
        if not labels:
            raise LabelError("labels: empty label list; give at least one class name")
        max_tokens = self.context_length - 2  # start- and end-of-text tokens
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not label.strip():
                raise LabelError(f"labels[{i}]: empty label {label!r}; every class needs a name")
            encode = getattr(self.tokenizer, "encode", None)
            if encode is not None:
                n = len(encode(label))
                if n > max_tokens:
                    raise LabelError(f"labels[{i}]: {label[:40]!r}... is {n} tokens, the text encoder takes at "
                                     f"most {max_tokens} (context {self.context_length})")
        return labels

    def tokenize(self, labels: Sequence[str]) -> torch.Tensor:
        """Token ids ``(N, context_length)`` of the checked labels (bare names, no prompt template)."""
        return self.tokenizer(self._check_labels(labels), context_length=self.context_length)

    @torch.no_grad()
    def encode(self, labels: Sequence[str]) -> torch.Tensor:
        """Unit-length fp32 embeddings ``(N, D)``, computed once per label tuple (also under autocast).

        The returned tensor is the cached one: do not modify it in place. Changing the tower's weights
        other than through ``load_state_dict`` requires ``clear_cache()``.
        """
        key = tuple(labels) if not isinstance(labels, str) else (labels,)
        device = self.tower.positional_embedding.device
        cached = self._cache.get(key)
        if cached is not None and cached.device == device:
            return cached
        tokens = self.tokenize(labels).to(device)
        with torch.autocast(device_type=device.type, enabled=False):
            feats = torch.cat([self.tower(chunk) for chunk in tokens.split(256)]).float()
        feats = F.normalize(feats, dim=-1)
        self._cache[key] = feats
        return feats
