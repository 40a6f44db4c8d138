#!/usr/bin/env python
"""Download the pretrained timm ViT and open_clip text weights into a cache dir (run on a login node).

    python tools/prepare_weights.py --cache-dir /shared/weights --config configs/lseg_vitl16_480_mseg.yaml

Compute nodes then train offline with ``model.weights_cache=/shared/weights`` (and ``HF_HUB_OFFLINE=1``):
the model looks the files up in that Hugging Face cache layout and never touches the network.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lseg.cli import cli_main  # noqa: E402
from lseg.config import add_config_args, load_config  # noqa: E402
from lseg.models import weights  # noqa: E402


@cli_main()  # config, missing weights offline, unwritable cache dir: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", required=True, help="directory to fill (Hugging Face cache layout)")
    add_config_args(p)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides).model
    cache_dir = weights.cache_dir_for(args.cache_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    sources = [weights.timm_source(cfg.backbone),
               weights.open_clip_source(cfg.text.arch, cfg.text.pretrained)]
    for src in sources:
        path = weights.find_cached(src, cache_dir)
        if path is not None:
            print(f"cached     {src.what}: {path}")
            continue
        if weights.offline():
            raise weights.WeightsError(f"{src.what} is not in {cache_dir} and HF_HUB_OFFLINE is set; "
                                       "run this on a machine with network access")
        print(f"fetching   {src.what} from {src.repo_id} ...", flush=True)
        print(f"downloaded {src.what}: {weights.download(src, cache_dir)}")
    print(f"done; train with model.pretrained=true model.weights_cache={cache_dir} (HF_HUB_OFFLINE=1 on compute nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
