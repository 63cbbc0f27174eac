"""Greedy token ids and prefill logits of the default model, for `--quant auto` and `none`, written
to one file: run before and after a refactor and `--compare` the two (bit for bit).

    .venv/bin/python scripts/behaviour_fingerprint.py --out before.pt
    .venv/bin/python scripts/behaviour_fingerprint.py --out after.pt --compare before.pt
"""
from __future__ import annotations

import argparse
import sys

import torch

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "List three prime numbers and explain why they are prime."]


def fingerprint() -> dict:
    from engine.engine import Engine
    try:
        from engine.records import LoadOptions
    except ImportError:
        from engine.engine import LoadOptions
    from engine.records import SamplingParams

    torch.set_num_threads(1)  # one thread: the same BLAS path on both runs
    out = {}
    for quant in ("auto", "none"):
        engine = Engine.load(None, LoadOptions(quant=quant))
        for i, prompt in enumerate(PROMPTS):
            ids = engine.chat_prompt_ids([{"role": "user", "content": prompt}])
            done = None
            for item in engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=32, ignore_eos=True)):
                done = item
            out[f"{quant}/{i}/ids"] = list(done.token_ids)
            out[f"{quant}/{i}/logits"] = prefill_logits(engine, ids)
    return out


def prefill_logits(engine, ids: list[int]) -> torch.Tensor:
    try:
        from engine.runtime.kv_cache import ContiguousKVCache
    except ImportError:  # before the engine moved into subpackages
        from engine.kv_cache import ContiguousKVCache
    model = engine.model
    weight = model.embed.weight
    cache = ContiguousKVCache(model.config, len(ids), 1, weight.device, weight.dtype)
    with torch.no_grad():
        return model(torch.tensor([ids]), cache.view(0, len(ids)))[0].float().clone()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare")
    args = parser.parse_args()
    now = fingerprint()
    torch.save(now, args.out)
    if not args.compare:
        return 0
    before = torch.load(args.compare)
    bad = [k for k in before if not (torch.equal(before[k], now[k]) if torch.is_tensor(before[k]) else before[k] == now[k])]
    print("identical" if not bad else f"DIFFERENT: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
