"""Cold and warm start of an installed Glassbox to its first generated token (docs/benchmarks.md).

    .venv/bin/python packaging/bench_start.py ROOT/usr/bin/glassbox [--runs 3]

Runs `glassbox --smoke` with no Python on PATH; "cold" first evicts the bundle's own files from
the page cache (posix_fadvise DONTNEED: only these files, not the machine's whole cache), so the
libraries and the model are read from disk again. Prints medians of the summary's times (counted
from the process's creation) and the CPU seconds other processes used meanwhile.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path


def evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def busy_seconds() -> float:
    """CPU seconds (user + system) spent on the whole machine so far."""
    fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(launcher: Path, home: str) -> dict[str, float]:
    env = {"PATH": str(launcher.parent), "HOME": home, "LANG": "C.UTF-8"}
    before, own_before = busy_seconds(), children_cpu()
    done = subprocess.run([str(launcher), "--smoke"], env=env, capture_output=True, text=True, check=True)
    machine, own = busy_seconds() - before, children_cpu() - own_before
    line = next(x for x in done.stdout.splitlines() if x.startswith("glassbox smoke ok"))
    times = {k: float(v) for k, v in re.findall(r" (\w+)_s=([\d.]+)", line)}
    times["own_cpu"], times["others_cpu"] = own, max(0.0, machine - own)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("launcher", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bundle = args.launcher.resolve().parent
    home = tempfile.mkdtemp()
    results = {"cold": [], "warm": []}
    for _ in range(args.runs):
        evict(bundle)
        results["cold"].append(run(args.launcher, home))
        results["warm"].append(run(args.launcher, home))
    for kind, rows in results.items():
        keys = rows[0].keys()
        print(kind, " ".join(f"{k}={statistics.median(r[k] for r in rows):.2f}" for k in keys),
              f"(medians of {len(rows)}; first_token per run: {[r['first_token'] for r in rows]})")


if __name__ == "__main__":
    main()
