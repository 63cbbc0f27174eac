"""What instrumentation costs per decode token (the speed issue's bounds: off < 3%, on < 25%).

    flock /tmp/glassbox-bench.lock .venv/bin/python scripts/bench_instrumentation.py --runs 7 --threads 1

One process, the default model, greedy, 32-token prompt; the three variants alternate run by run and the
medians of ms per token (CPU time of this process, and wall) are compared:
  bare   forward passes through the paged cache + argmax, no records (the floor)
  off    Runner.step() with instrumentation off: sampler, StepRecord, detokenizer, stop checks
  on     the same with the probabilities panel (top 10 before/after the sampler, 256 stored logits), routing
         and one attention head of one layer (the explicit attention path for that layer)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.runtime.block_manager import BlockTable
from engine.engine import Engine
from engine.records import LoadOptions
from engine.records import GenerationRequest, InstrumentOptions, RequestDone, SamplingParams

ON = InstrumentOptions(top_n=10, stored_logits=256, routing=True, attention_layers=(15,), attention_heads=(0,))


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bare(engine, prompt, n) -> tuple[float, float]:
    """Seconds (wall, CPU) of n decode steps after the prefill."""
    runner, table = engine._runner, BlockTable()
    logits = runner._forward([table], [prompt], None)[0, -1]
    w, c = _clock()
    for _ in range(n):
        token = int(logits.argmax())
        runner.blocks.append(table, [token])
        logits = runner._forward([table], None, None)[0, -1]
    w2, c2 = _clock()
    runner.blocks.release(table)
    return w2 - w, c2 - c


def stepped(engine, prompt, n, options: InstrumentOptions) -> tuple[float, float]:
    """Seconds (wall, CPU) of n engine steps after the one that admits the request (prefill + first token)."""
    runner = engine._runner
    rid = runner.submit(GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=n + 1,
                                                                        ignore_eos=True), instrument=options))
    runner.step()
    w, c = _clock()
    while runner.has_work():
        for item in runner.step():
            if isinstance(item, RequestDone) and item.request_id == rid:
                assert item.error is None, item.error
    w2, c2 = _clock()
    return w2 - w, c2 - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=48)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = Engine.load(None, LoadOptions(device="cpu"))
    prompt = engine.prompt_ids("The quick brown fox jumps over the lazy dog while the engine measures. " * 4)[:32]
    variants = {"bare": lambda: bare(engine, prompt, args.new_tokens),
                "off": lambda: stepped(engine, prompt, args.new_tokens, InstrumentOptions()),
                "on": lambda: stepped(engine, prompt, args.new_tokens, ON)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.runs):
        for name, fn in variants.items():
            times[name].append(fn())
    per_token = {k: [statistics.median(t[i] for t in v) / args.new_tokens * 1000 for i in (0, 1)]
                 for k, v in times.items()}
    print(f"{args.threads} thread(s), {args.new_tokens} tokens, medians of {args.runs}")
    print("| variant | ms per token (CPU) | ms per token (wall) | vs bare (CPU) | vs off (CPU) |\n|---|---|---|---|---|")
    for k, (wall, cpu) in per_token.items():
        print(f"| {k} | {cpu:.2f} | {wall:.2f} | {cpu / per_token['bare'][1] - 1:+.1%} | "
              f"{cpu / per_token['off'][1] - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
