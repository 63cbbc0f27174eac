"""Where a decode token's time goes: the per-token budget in docs/benchmarks.md.

    flock /tmp/glassbox-bench.lock .venv/bin/python scripts/profile_decode.py --threads 1 2

For each thread count, on the default model (or --model), greedy, 32-token prompt:
  engine     ms per token through Engine.generate (records, sampler, detokenizer: what the app pays)
  bare       the same forward passes through the paged cache with a bare argmax, no records
  forward    torch.profiler over bare decode steps, split into matmul kernels, attention (SDPA),
             KV cache writes/gathers and the rest (norms, RoPE, casts, adds: "glue"); what the profiler
             does not see is Python (module calls, views, the engine's bookkeeping)
CPU time (this process) is printed beside wall time: on a shared machine wall time includes waiting for
a core, CPU time does not. Compare only figures from one run.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

KERNELS = ("glassbox::", "_weight_int4pack_mm", "_weight_int8pack_mm", "aten::mm", "aten::addmm", "aten::matmul", "aten::linear",
           "aten::bmm")
ATTENTION = ("scaled_dot_product", "flash_attention")
KV = ("aten::index", "index_copy", "aten::index_put")


def _bare_decode(engine, prompt: list[int], n: int):
    """Prefill, then n one-token steps: reserve a slot, forward through the paged cache, argmax."""
    from engine.runtime.block_manager import BlockTable

    runner = engine._runner
    table = BlockTable()
    logits = runner._forward([table], [prompt], None)[0, -1]
    for _ in range(n):
        token = int(logits.argmax())
        runner.blocks.append(table, [token])
        logits = runner._forward([table], None, None)[0, -1]
    runner.blocks.release(table)


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def profile(engine, threads: int, new_tokens: int) -> dict:
    from engine.records import GenerationDone, SamplingParams

    torch.set_num_threads(threads)
    prompt = engine.prompt_ids("The quick brown fox jumps over the lazy dog while the engine measures. " * 4)[:32]
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens + 1, ignore_eos=True)
    run = lambda: [x for x in engine.generate(prompt, params) if isinstance(x, GenerationDone)][0]  # noqa: E731
    run()  # warm up
    rows = {}
    engine_runs = [_timed(run) for _ in range(3)]
    bare_runs = [_timed(lambda: _bare_decode(engine, prompt, new_tokens)) for _ in range(3)]
    prefill = [_timed(lambda: _bare_decode(engine, prompt, 0)) for _ in range(3)]
    med = lambda xs, i: sorted(x[i] for x in xs)[len(xs) // 2]  # noqa: E731
    for name, runs in (("engine", engine_runs), ("bare", bare_runs)):
        rows[name] = {"wall_ms": 1000 * (med(runs, 0) - med(prefill, 0)) / new_tokens,
                      "cpu_ms": 1000 * (med(runs, 1) - med(prefill, 1)) / new_tokens}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _bare_decode(engine, prompt, new_tokens)
    groups = {"matmul kernels": 0.0, "attention (SDPA)": 0.0, "KV write + gather": 0.0, "glue ops": 0.0}
    calls = 0
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", "glassbox::")):  # glassbox:: our quantized kernels
            continue
        calls += event.count
        us = event.self_cpu_time_total
        if any(k in event.key for k in KERNELS):
            groups["matmul kernels"] += us
        elif any(k in event.key for k in ATTENTION):
            groups["attention (SDPA)"] += us
        elif any(k in event.key for k in KV):
            groups["KV write + gather"] += us
        else:
            groups["glue ops"] += us
    steps = new_tokens + 1  # the prefill's share is small beside new_tokens one-token steps
    rows["profile_ms"] = {k: v / 1000 / steps for k, v in groups.items()}
    rows["aten_calls_per_token"] = calls / steps
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--quant", default="auto")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from engine.engine import Engine
    from engine.records import LoadOptions

    engine = Engine.load(args.model, LoadOptions(device="cpu", quant=args.quant))
    weights = sum(engine.model.weight_bytes().values())
    result = {"weight_bytes": weights}
    for t in args.threads:
        result[t] = profile(engine, t, args.new_tokens)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"weights read per token: {weights / 1e6:.1f} MB")
    for t in args.threads:
        r = result[t]
        print(f"\n{t} thread(s): engine {r['engine']['wall_ms']:.2f} ms/token wall ({r['engine']['cpu_ms']:.2f} CPU), "
              f"bare {r['bare']['wall_ms']:.2f} wall ({r['bare']['cpu_ms']:.2f} CPU); "
              f"{r['aten_calls_per_token']:.0f} aten calls per token")
        for k, v in r["profile_ms"].items():
            print(f"  {k:20} {v:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
