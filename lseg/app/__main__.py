"""``python -m lseg.app --checkpoint CKPT``: the interactive demo (type any labels, see the segmentation).

    python -m lseg.app --checkpoint runs/smoke/checkpoints/last.pt            # http://127.0.0.1:7860
    python -m lseg.app --checkpoint lseg_demo.pt --device cuda --precision bf16 --port 8080
    python -m lseg.app --checkpoint lseg_demo.pt --submit --partition gpu --timeout 120   # on a GPU node

Needs the ``app`` extra (``pip install -e '.[app]'``). Binds to loopback unless ``--host`` says
otherwise and never opens a public share link. With ``--submit`` the same server runs as a cluster
job (scheduler flags as in the other launchers) and the ``ssh -L`` command to reach it is printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lseg.app.core import AppSettings, InputError, Limits
from lseg.cli import cli_main, parse_args, positive_float, positive_int
from lseg.launch import LaunchError, add_scheduler_args
from lseg.runtime import DEVICES, PRECISIONS


class AppError(RuntimeError):
    """The demo cannot start (missing extra, bad flag); one line."""


def port_number(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {text}")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lseg.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="lseg-hpc checkpoint (training, averaged or converted)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; 0.0.0.0 lets anyone who reaches this machine in)")
    p.add_argument("--port", type=port_number, default=None, help="port (default: first free from 7860)")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    d = Limits()
    p.add_argument("--max-pixels", type=positive_int, default=d.max_pixels,
                   help="larger images are downscaled to this many pixels (default %(default)s)")
    p.add_argument("--max-labels", type=positive_int, default=d.max_labels,
                   help="most labels per request (default %(default)s)")
    p.add_argument("--max-upload-mb", type=positive_float, default=d.max_upload_mb,
                   help="largest upload in MB (default %(default)s)")
    c = p.add_argument_group("cluster job")
    c.add_argument("--submit", action="store_true",
                   help="run the server as a cluster job (one task, one GPU, 4 h by default; scheduler flags "
                        "below) and print the ssh command that reaches it")
    c.add_argument("--dry-run", action="store_true", help="with --submit: print the job script, submit nothing")
    c.add_argument("--logs-dir", default="runs/app/submitit", help="with --submit: submitit folder (logs, address)")
    add_scheduler_args(p, gpus_per_node=1)
    p.set_defaults(timeout=240)  # a demo session, not a training run
    return p


@cli_main(AppError, InputError, LaunchError)
def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(build_parser(), None if argv is None else list(argv))
    if a.overrides:
        raise AppError(f"the demo takes no config overrides (the checkpoint holds the config): {a.overrides[0]}")
    if a.dry_run and not a.submit:
        raise AppError("--dry-run shows what --submit would submit: add --submit")
    if not Path(a.checkpoint).is_file():
        raise AppError(f"checkpoint not found: {a.checkpoint}")
    settings = AppSettings(str(Path(a.checkpoint).resolve()), a.device, a.precision, a.ema, a.host, a.port,
                           Limits(a.max_pixels, a.max_labels, a.max_upload_mb))
    if a.submit:
        from lseg.app.cluster import SubmitError, submit_app

        try:
            submit_app(settings, a)
        except SubmitError as exc:
            raise AppError(str(exc)) from None
        return 0
    try:
        from lseg.app.ui import run_app
    except ImportError as exc:
        raise AppError(f"the demo needs the app extra ({exc.name} is missing): pip install -e '.[app]'") from None

    def ready(host: str, port: int) -> None:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        print(f"lseg demo on http://{shown}:{port}  (Ctrl-C stops it)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: bound to {host}: anyone who can reach this machine can use the demo", flush=True)

    run_app(settings, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
