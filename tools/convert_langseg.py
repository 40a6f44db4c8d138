#!/usr/bin/env python
"""Convert an official lang-seg checkpoint (e.g. demo_e200.ckpt) into an lseg-hpc checkpoint.

    python tools/convert_langseg.py demo_e200.ckpt lseg_demo.pt
    python tools/convert_langseg.py pascal_fold0.ckpt pascal_fold0.pt --backbone clip_resnet101 --trust-pickle
    python tools/convert_langseg.py model.ckpt out.pt --arch-option 2 --block-depth 2 --activation relu

The image encoder is read off the file; --backbone (ours or lang-seg's name) checks it. The rest of
the model config is the official recipe (schema defaults) unless --config gives another model
section; model.key=value overrides work too (the other flags below are shorthands for them).
Official Lightning files may hold pickled Python objects (callback states); they are refused
unless --trust-pickle is given, for files whose origin you trust.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lseg.checkpoint_io import save_atomic
from lseg.cli import cli_main, non_negative_int, parse_args
from lseg.config import ConfigError, load_config, parse_overrides
from lseg.models.backbone import BACKBONES
from lseg.models.convert import ConversionError, convert_checkpoint

SHORTHANDS = {"arch_option": "model.arch_option", "block_depth": "model.block_depth", "activation": "model.activation"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="official lang-seg checkpoint (Lightning .ckpt or a plain state dict)")
    p.add_argument("output", help="where to write the lseg-hpc checkpoint")
    p.add_argument("--config", default=None,
                   help="YAML whose model section describes the network (default: official ViT-L/16 recipe)")
    names = [*BACKBONES, *(s.official for s in BACKBONES.values() if s.official)]
    p.add_argument("--backbone", choices=names, default=None, metavar="NAME",
                   help="the image encoder the file must hold (else it is taken from the file): "
                        + ", ".join(names))
    p.add_argument("--arch-option", type=int, choices=(0, 1, 2), default=None,
                   help="official arch_option (default: 0, or an error if the file has head_block weights)")
    p.add_argument("--block-depth", type=non_negative_int, default=None,
                   help="official block_depth of the arch_option 1/2 block")
    p.add_argument("--activation", choices=("relu", "lrelu", "tanh"), default=None,
                   help="activation of the arch_option 1/2 block (official training default lrelu, zero-shot relu)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling (runs code from the file); only for files you trust")
    return p


@cli_main(ConversionError)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    flags = [f"{key}={getattr(args, name)}" for name, key in SHORTHANDS.items() if getattr(args, name) is not None]
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ConversionError(f"{args.output}: the output would overwrite the input; choose another path")
    cfg = load_config(args.config, [*args.overrides, *flags])
    if cfg.model.arch_option == 0 and (args.block_depth is not None or args.activation is not None):
        raise ConfigError("--block-depth/--activation describe the arch_option 1/2 block: pass --arch-option 1|2")
    # A backbone named by --backbone, a model.backbone override or a --config file is a claim to check.
    stated = args.config is not None or any(k == "model.backbone" for k, _ in parse_overrides(args.overrides))
    claim = args.backbone or (cfg.model.backbone if stated else None)
    payload = convert_checkpoint(args.input, cfg, trust_pickle=args.trust_pickle, backbone=claim)
    save_atomic(payload, args.output)
    m = payload["config"]["model"]
    print(f"wrote {args.output}: {len(payload['model'])} tensors ({payload['converted_from']['dropped_tensors']} "
          f"unused official tensors dropped), backbone {m['backbone']}, arch_option {m['arch_option']}, "
          f"block_depth {m['block_depth']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
