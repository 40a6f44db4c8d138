"""Latency of a running demo under concurrent clients: ``python -m lseg.app.loadtest --url URL``.

    python -m lseg.app.loadtest --url http://127.0.0.1:7860 --requests 20 --clients 4

Why from the client side, over HTTP: what a user waits for is the queue, the upload, inference and
the download together. Each client is its own ``gradio_client`` session sending the same request;
the server's own inference time (shown in the page) is read back from each answer too.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

from lseg.cli import cli_main, parse_args, positive_float, positive_int

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "street.jpg"
_INFERENCE_MS = re.compile(r"\*\*(\d+) ms\*\* inference")


class LoadTestError(RuntimeError):
    """The demo did not answer every request in time; one line."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def load_test(url: str, image: str | Path = DEFAULT_IMAGE, labels: str = "sky, building, road, car, tree, other",
              requests: int = 20, clients: int = 4, multiscale: bool = False, timeout_s: float = 600.0) -> dict:
    """Send ``requests`` segment requests from ``clients`` concurrent sessions; latency statistics in seconds.

    Every request must succeed within ``timeout_s`` in all; the answers' masks are returned by file
    path in ``masks`` so callers can check that equal requests got equal answers.
    """
    import httpx
    from gradio_client import Client, handle_file

    try:
        Client(url, verbose=False)
    except (httpx.HTTPError, OSError, ValueError) as exc:  # nothing listening, or not a Gradio app
        raise LoadTestError(f"no demo answers at {url}: {' '.join(str(exc).split())[:200]}") from None
    todo = list(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    server_ms: list[float] = []
    masks: list[str] = []

    def client_loop() -> None:
        client = Client(url, verbose=False)
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            start = time.perf_counter()
            mask, _, _, _, info = client.predict(handle_file(str(image)), labels, multiscale, "", api_name="/segment")
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                masks.append(mask)
                found = _INFERENCE_MS.search(info)
                if found:
                    server_ms.append(float(found.group(1)))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_loop) for _ in range(clients)]
        done, pending = wait(futures, timeout=timeout_s)
        if pending:
            with lock:
                todo.clear()  # let the clients stop after their current request
            raise LoadTestError(f"{len(latencies)} of {requests} requests answered within {timeout_s:g} s")
        for f in done:
            f.result()  # a failed request raises here
    wall = time.perf_counter() - start
    return {"requests": requests, "clients": clients, "multiscale": multiscale, "wall_s": wall,
            "median_s": statistics.median(latencies), "p95_s": percentile(latencies, 95), "max_s": max(latencies),
            "server_inference_median_ms": statistics.median(server_ms) if server_ms else None, "masks": masks}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lseg.app.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the running demo, e.g. http://127.0.0.1:7860")
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="image sent with every request")
    p.add_argument("--labels", default="sky, building, road, car, tree, other")
    p.add_argument("--requests", type=positive_int, default=20)
    p.add_argument("--clients", type=positive_int, default=4, help="concurrent sessions")
    p.add_argument("--multiscale", action="store_true", help="multi-scale + flip instead of one pass")
    p.add_argument("--timeout-s", type=positive_float, default=600.0, help="limit for all requests together")
    return p


@cli_main(LoadTestError)
def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(build_parser(), None if argv is None else list(argv))
    if a.overrides:
        raise LoadTestError(f"unexpected argument: {a.overrides[0]}")
    if not Path(a.image).is_file():
        raise LoadTestError(f"image not found: {a.image}")
    stats = load_test(a.url, a.image, a.labels, a.requests, a.clients, a.multiscale, a.timeout_s)
    stats.pop("masks")
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
