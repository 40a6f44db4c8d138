#!/usr/bin/env python
"""Convert an official lang-seg checkpoint (e.g. demo_e200.ckpt) into an lseg-hpc checkpoint.

    python tools/convert_langseg.py demo_e200.ckpt lseg_demo.pt
    python tools/convert_langseg.py fold0.ckpt out.pt --arch-option 2 --block-depth 2 --activation relu

The model config is the official ViT-L/16 recipe (schema defaults) unless --config gives another
model section. Official Lightning files may hold pickled Python objects (callback states); they are
refused unless --trust-pickle is given, for files whose origin you trust.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lseg.checkpoint_io import FORMAT, CheckpointError, load_checkpoint, save_atomic  # noqa: E402
from lseg.cli import cli_main  # noqa: E402
from lseg.config import ConfigError, load_config, to_dict  # noqa: E402
from lseg.models.convert import ConversionError, convert_state_dict, official_state_dict  # noqa: E402
from lseg.models.lseg import build_model  # noqa: E402

HEAD_BLOCK_KEY = "scratch.head_block.depthwise.depthwise.weight"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="official lang-seg checkpoint (Lightning .ckpt or a plain state dict)")
    p.add_argument("output", help="where to write the lseg-hpc checkpoint")
    p.add_argument("--config", default=None,
                   help="YAML whose model section describes the network (default: official ViT-L/16 recipe)")
    p.add_argument("--arch-option", type=int, choices=(0, 1, 2), default=None,
                   help="official arch_option (default: 0, or an error if the file has head_block weights)")
    p.add_argument("--block-depth", type=int, default=None, help="official block_depth (arch_option 1/2)")
    p.add_argument("--activation", choices=("relu", "lrelu", "tanh"), default=None,
                   help="activation of the arch_option 1/2 block (official training default lrelu, zero-shot relu)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling (runs code from the file); only for files you trust")
    return p.parse_args(argv)


def convert(args: argparse.Namespace) -> str:
    cfg = load_config(args.config)
    overrides = {"pretrained": False}
    if args.arch_option is not None:
        overrides["arch_option"] = args.arch_option
    if args.block_depth is not None:
        overrides["block_depth"] = args.block_depth
    if args.activation is not None:
        overrides["activation"] = args.activation
    cfg.model = dataclasses.replace(cfg.model, **overrides)

    try:
        ckpt = load_checkpoint(args.input, trust_pickle=args.trust_pickle)
    except CheckpointError as exc:
        if "refused to unpickle" in str(exc):
            raise CheckpointError(f"{exc}; re-run with --trust-pickle if you trust this file") from None
        raise
    official, kind = official_state_dict(ckpt)
    has_head_block = HEAD_BLOCK_KEY in official
    if has_head_block and cfg.model.arch_option == 0:
        raise ConversionError(f"the checkpoint has '{HEAD_BLOCK_KEY}' (arch_option 1 or 2): pass --arch-option "
                              "1|2 and the --block-depth/--activation it was trained with")
    with torch.device("meta"):  # shapes only: no memory, no init time
        expected = build_model(cfg.model).state_dict()
    state, dropped = convert_state_dict(official, expected, cfg.model)
    payload = {
        "format": FORMAT,
        "model": state,
        "config": to_dict(cfg),
        "converted_from": {"path": str(Path(args.input).resolve()), "source_format": kind,
                           "dropped_tensors": dropped},
    }
    save_atomic(payload, args.output)
    return f"wrote {args.output}: {len(state)} tensors ({dropped} unused official tensors dropped), " \
           f"arch_option {cfg.model.arch_option}, block_depth {cfg.model.block_depth}"


@cli_main()  # everything else a user can cause (unwritable output, ...) is one line too
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(convert(args))
    except (CheckpointError, ConversionError, ConfigError) as exc:
        msg = str(exc) if str(args.input) in str(exc) else f"{args.input}: {exc}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
