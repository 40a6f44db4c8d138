"""How benchmark results are shown and kept: a table headed by the machine, one JSON line per run.

A CPU figure means little without the load it ran under, so every table is headed by the CPU
model, cores, torch threads, load average and GPU; the JSON record keeps the same facts.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a figure: CPU model, cores, load, GPU, versions."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            cpu = m.group(1).strip()
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "loadavg": list(os.getloadavg()), "torch": torch.__version__,
                            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_cell(x: Any) -> str:
    """One table cell: floats with 3 significant digits (whole numbers from 1000 on), None as n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain aligned text table of ``rows`` (dicts) in ``columns`` order."""
    body = [[format_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.rjust(w) for x, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def append_json(path: str | Path, record: dict[str, Any] | None) -> None:
    """Append one record as a JSON line (a history of runs, one file); ``None`` only checks that it can."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if record is not None:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def header(record: dict[str, Any]) -> str:
    """``# <command>: <cpu>, <n> cores, torch threads <t>, load average <1 5 15>[, <gpu>]``."""
    m = record["machine"]
    return (f"# {record['command']}: {m['cpu']}, {m['cpu_count']} cores, torch threads {m['torch_threads']}, "
            f"load average {' '.join(f'{x:.2f}' for x in m['loadavg'])}" + (f", {m['gpu']}" if "gpu" in m else ""))


def emit(record: dict[str, Any], table: str, json_out: str | Path | None = None) -> dict[str, Any]:
    """Print the header and ``table``; append ``record`` to ``json_out`` when given. Returns ``record``."""
    print(header(record))
    print(table)
    if json_out:
        append_json(json_out, record)
    return record
