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

from eupe.atomic_io import atomic_path

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
                notes: Sequence[str] = (), key_columns: int = 1) -> Path:
    """Print a markdown table and save it as ``results/<name>.md`` and ``.csv``.

    A run that measures only some rows (``--names eupe-t``) merges them into the saved table: rows of the saved
    table whose first ``key_columns`` values are not measured again are kept (and said to be kept, with the
    machine and date they were taken on), and so are its notes. A saved table with other columns is replaced."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    md, csv_path = RESULTS / f"{name}.md", RESULTS / f"{name}.csv"
    measured = [list(r) for r in rows]
    kept, old_notes, origin = _saved_rows(md, csv_path, columns, {_key(r, key_columns) for r in measured},
                                          key_columns)
    merged = measured + [r for _, r in kept]
    order = {k: i for i, (k, _) in enumerate(_saved_order(csv_path, columns, key_columns))}
    merged.sort(key=lambda r: order.get(_key(r, key_columns), len(order)))  # saved rows keep their place
    all_notes = list(notes) + [n for n in old_notes if n not in notes and not n.startswith(KEPT_NOTE)]
    if kept:
        all_notes.append(f"{KEPT_NOTE} {origin}: {', '.join(' / '.join(k) for k, _ in kept)}")
    fmt = [[_fmt(_number(v)) for v in row] for row in merged]
    lines = [f"# {title}", "", f"Machine: {machine()}", f"Date: {time.strftime('%Y-%m-%d')}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in fmt]
    lines += [""] + [f"- {n}" for n in all_notes]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(merged)
    print(f"{md}: {len(measured)} rows measured now" + (f", {len(kept)} kept from the saved table" if kept else ""))
    return md


KEPT_NOTE = "rows kept from the table of"


def read_section(path: Path, heading: str) -> str | None:
    """The body of the section ``heading`` (a ``## ...`` line) of a markdown file, up to the next ``## ``
    heading; None when the file or the section is absent."""
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    if heading not in lines:
        return None
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip("\n")


def replace_section(path: Path, heading: str, body: str | None) -> None:
    """Write section ``heading`` with ``body`` into a markdown file, in place of an earlier one with that
    heading or at its end (``body`` None: nothing to write)."""
    if body is None:
        return
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    while lines and not lines[-1].strip():
        lines.pop()
    lines += ["", heading, "", body.strip("\n")]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).lstrip("\n") + "\n")


def _key(row: Sequence[object], n: int) -> tuple[str, ...]:
    return tuple(str(v) for v in row[:n])


def _saved_order(csv_path: Path, columns: Sequence[str], n: int) -> list[tuple[tuple[str, ...], list[str]]]:
    """(key, row) of the saved CSV when it has the same columns, else nothing."""
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as fh:
        table = list(csv.reader(fh))
    if not table or table[0] != list(columns):
        return []
    return [(_key(r, n), r) for r in table[1:] if r]


def _saved_rows(md: Path, csv_path: Path, columns: Sequence[str], measured: set[tuple[str, ...]], n: int
                ) -> tuple[list[tuple[tuple[str, ...], list[str]]], list[str], str]:
    """Rows of the saved table not measured now, its notes, and 'DATE on MACHINE' it was taken."""
    kept = [(k, r) for k, r in _saved_order(csv_path, columns, n) if k not in measured]
    notes, taken = [], {"Machine": "?", "Date": "?"}
    if md.is_file() and kept:
        for line in md.read_text().splitlines():
            if line.startswith("- "):
                notes.append(line[2:])
            for field in taken:
                if line.startswith(f"{field}: "):
                    taken[field] = line[len(field) + 2:]
    return kept, notes, f"{taken['Date']} on {taken['Machine']}"


def _number(v: object) -> object:
    """A saved CSV cell back as a number where it is one (for the markdown formatting)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
