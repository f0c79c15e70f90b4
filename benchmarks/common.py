"""Helpers shared by the benchmark scripts: machine description, timing, and table writing."""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the hardware the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        desc += f"; GPU {torch.cuda.get_device_name(0)}"
    return desc


def time_call(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def in_process(target: Callable[..., None], *args: object) -> dict:
    """Run ``target(*args, queue)`` in a fresh spawned process (its own peak memory, its own thread settings)
    and return what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def write_table(name: str, columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str,
                notes: Sequence[str] = ()) -> Path:
    """Print a markdown table and save it as ``results/<name>.md`` and ``.csv``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    fmt = [[_fmt(v) for v in row] for row in rows]
    lines = [f"# {title}", "", f"Machine: {machine()}", f"Date: {time.strftime('%Y-%m-%d')}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in fmt]
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    md = RESULTS / f"{name}.md"
    md.write_text(text)
    with open(RESULTS / f"{name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return md


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
