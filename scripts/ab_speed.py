"""Decode speed of two checkouts of the engine side by side (before/after a change), on a shared machine.

    git archive HEAD engine | tar -x -C /tmp/before      # the engine as committed
    flock /tmp/glassbox-bench.lock .venv/bin/python scripts/ab_speed.py /tmp/before . --runs 7 --threads 1

Each run starts one subprocess per checkout (alternating, so load from other processes hits both alike)
that loads the default model, warms up, then times greedy decode through Engine.generate ("engine") and
through bare forward passes with an argmax ("bare"). Reported: medians of ms per token, wall and CPU
time of the process (CPU time leaves out waiting for a core, which dominates wall time when the machine
is oversubscribed), and the ratio after / before.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time, torch
from engine.engine import Engine
from engine.records import LoadOptions
from engine.runtime.block_manager import BlockTable
from engine.records import GenerationDone, SamplingParams
threads, n, quant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
engine = Engine.load(None, LoadOptions(device="cpu", quant=quant))
prompt = engine.prompt_ids("The quick brown fox jumps over the lazy dog while the engine measures. " * 4)[:32]
params = SamplingParams(temperature=0, max_new_tokens=n + 1, ignore_eos=True)
def engine_run():
    return [x for x in engine.generate(prompt, params) if isinstance(x, GenerationDone)][0].token_ids
def bare_run(steps):
    runner, table = engine._runner, BlockTable()
    logits = runner._forward([table], [prompt], None)[0, -1]
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        runner.blocks.append(table, [out[-1]])
        logits = runner._forward([table], None, None)[0, -1]
    runner.blocks.release(table)
    return out
def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - w, time.process_time() - c, value
engine_run()
pw, pc, _ = timed(lambda: bare_run(0))
ew, ec, tokens = timed(engine_run)
bw, bc, bare_tokens = timed(lambda: bare_run(n))
print(json.dumps({"engine_wall": (ew - pw) / n * 1e3, "engine_cpu": (ec - pc) / n * 1e3,
                  "bare_wall": (bw - pw) / n * 1e3, "bare_cpu": (bc - pc) / n * 1e3,
                  "tokens": list(tokens)[1:], "bare_tokens": bare_tokens}))
"""


def run(root: str, threads: int, n: int, quant: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(n), quant], env=env, cwd=os.path.abspath(root),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--quant", default="auto")
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for name in results:
            results[name].append(run(getattr(args, name), args.threads, args.new_tokens, args.quant))
    print(f"{args.threads} thread(s), quant {args.quant}, {args.new_tokens} tokens, medians of {args.runs} "
          f"(load average now {os.getloadavg()[0]:.1f})")
    print("| ms per token | before | after | after / before |\n|---|---|---|---|")
    for key in ("engine_wall", "engine_cpu", "bare_wall", "bare_cpu"):
        b, a = (statistics.median(r[key] for r in results[n]) for n in ("before", "after"))
        print(f"| {key.replace('_', ' ')} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    same = results["before"][0]["tokens"] == results["after"][0]["tokens"]
    print(f"greedy tokens identical: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
