#!/usr/bin/env python
"""Download the pretrained timm ViT and open_clip text weights into a cache dir (run on a login node).

    python tools/prepare_weights.py --cache-dir /shared/weights --config configs/lseg_vitl16_480_mseg.yaml

Compute nodes then train offline with ``model.weights_cache=/shared/weights`` (and ``HF_HUB_OFFLINE=1``):
the model looks the files up in that Hugging Face cache layout and never touches the network.
"""
from __future__ import annotations

import argparse
import sys

from lseg.cli import cli_main, parse_args
from lseg.config import add_config_args, load_config
from lseg.models.weights import prepare_cache


@cli_main()  # config, missing weights offline, unwritable cache dir: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", required=True, help="directory to fill (Hugging Face cache layout)")
    add_config_args(p)
    args = parse_args(p, argv)
    cache_dir = prepare_cache(load_config(args.config, args.overrides).model, args.cache_dir)
    print(f"done; train with model.pretrained=true model.weights_cache={cache_dir} (HF_HUB_OFFLINE=1 on compute nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
