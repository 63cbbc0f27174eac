"""Decode speed of a MoEfied model by top-k, beside its dense source, in one process.

Each variant decodes the same greedy continuation one token at a time over a contiguous cache
(plain forwards: no sampler, no paging), rounds alternate variant by variant so machine noise hits
them alike, and medians are reported. Top-k is changed in place on one loaded model (the weights
are the same; only how many experts each token runs changes), so the figures isolate expert work.

    flock /tmp/glassbox-bench.lock .venv/bin/python scripts/bench_moe.py --moe DIR --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.kv_cache import ContiguousKVCache  # noqa: E402
from engine.loaders import load_checkpoint  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.moefy.report import set_top_k  # noqa: E402

PROMPT = "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He"


def decode_tok_s(model, prompt: list[int], new_tokens: int) -> float:
    cache = ContiguousKVCache(model.config, len(prompt) + new_tokens)
    logits = model(torch.tensor([prompt]), cache.view(0, len(prompt)), last_only=True)
    token, pos = int(logits[0, -1].argmax()), len(prompt)
    started = time.perf_counter()
    for _ in range(new_tokens):
        logits = model(torch.tensor([[token]]), cache.view(pos, 1))
        token, pos = int(logits[0, -1].argmax()), pos + 1
    return new_tokens / (time.perf_counter() - started)


def other_cpu_seconds() -> float:
    """CPU time the rest of the machine used (from /proc/stat minus ours): noise beside the figures."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields) - fields[3] - fields[4]) / ticks
    return busy - sum(os.times()[:2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", required=True, help="the MoEfied folder (python -m engine moefy --out DIR)")
    ap.add_argument("--dense", help="its dense source (default: the default model)")
    ap.add_argument("--top-k", default="1,2,4,8")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense_ckpt = load_checkpoint(args.dense)
    prompt = dense_ckpt.tokenizer.encode(PROMPT)
    dense = Decoder.from_tensors(dense_ckpt.config, dense_ckpt.tensors)
    moe_ckpt = load_checkpoint(args.moe)
    moe = Decoder.from_tensors(moe_ckpt.config, moe_ckpt.tensors)
    ks = [int(k) for k in args.top_k.split(",")]
    samples: dict[str, list[float]] = {"dense": [], **{f"top-{k}": [] for k in ks}}
    cpu0 = other_cpu_seconds()
    wall0 = time.perf_counter()
    for _ in range(args.runs):
        samples["dense"].append(decode_tok_s(dense, prompt, args.new_tokens))
        for k in ks:
            set_top_k(moe, k)
            samples[f"top-{k}"].append(decode_tok_s(moe, prompt, args.new_tokens))
    other = (other_cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    E = moe_ckpt.config.moe.n_experts
    rows = [{"variant": name, "experts_run": "dense MLP" if name == "dense" else f"{name[4:]} of {E}",
             "decode_tok_s": round(statistics.median(v), 2), "runs": [round(x, 2) for x in v]}
            for name, v in samples.items()]
    if args.json:
        print(json.dumps({"threads": args.threads, "new_tokens": args.new_tokens,
                          "other_processes_cores_busy": round(other, 2), "rows": rows}))
    else:
        print(f"{args.new_tokens} greedy tokens, {args.threads} threads, medians of {args.runs}; "
              f"other processes kept {other:.2f} cores busy on average")
        for r in rows:
            print(f"{r['variant']:>8}  {r['decode_tok_s']:8.2f} tok/s   (runs: {r['runs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
