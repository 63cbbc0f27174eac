"""What structured output costs per decode step on the default model: the same greedy decode with and
without a JSON-schema constraint (runs alternating, medians), plus the mask computation alone.

    .venv/bin/python scripts/bench_structured.py --runs 5 --new-tokens 64 --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# A long array of small records: the output goes on for every token asked for, through keys, strings,
# integers and separators, so the mask is computed in every kind of grammar state.
SCHEMA = {"type": "array", "minItems": 100, "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["red", "green", "blue"]}}}}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from engine.text.constraints import TokenConstraint
    from engine.engine import Engine
    from engine.records import GenerationDone, SamplingParams

    torch.set_num_threads(args.threads)
    engine = Engine.load()
    prompt = engine.chat_prompt_ids([{"role": "user", "content": "List people as JSON."}])
    plain = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    constrained = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, constraint_kind="json_schema",
                                 constraint=json.dumps(SCHEMA))

    def per_step_ms(params) -> tuple[float, str]:
        done = next(x for x in engine.generate(prompt, params) if isinstance(x, GenerationDone))
        assert len(done.token_ids) == args.new_tokens, done.finish_reason
        return done.decode_ms / (len(done.token_ids) - 1), done.text

    # Time spent inside the constraint during the constrained runs (mask, its unpacking, advancing): on a
    # shared, noisy machine this share of the step is steadier than the difference of two medians.
    spent = []
    for name in ("allowed", "advance"):
        original = getattr(TokenConstraint, name)

        def timed(self, *a, _original=original):
            t0 = time.perf_counter()
            try:
                return _original(self, *a)
            finally:
                spent.append(time.perf_counter() - t0)
        setattr(TokenConstraint, name, timed)

    per_step_ms(plain)  # warm-up
    times = {"plain": [], "constrained": [], "inside_ms": []}
    for _ in range(args.runs):
        times["plain"].append(per_step_ms(plain)[0])
        spent.clear()
        ms, text = per_step_ms(constrained)
        times["constrained"].append(ms)
        times["inside_ms"].append(1000 * sum(spent) / args.new_tokens)
    # The mask alone, replaying the constrained output token by token.
    constraint = TokenConstraint.start("json_schema", constrained.constraint, engine.tokenizer, engine.config.vocab_size)
    mask_us = []
    for token in engine.tokenizer.encode(text):
        t0 = time.perf_counter()
        constraint.allowed()
        mask_us.append((time.perf_counter() - t0) * 1e6)
        constraint.advance(token)
    plain_ms, constrained_ms = statistics.median(times["plain"]), statistics.median(times["constrained"])
    inside_ms = statistics.median(times["inside_ms"])
    print(json.dumps({"plain_ms_per_step": round(plain_ms, 2), "constrained_ms_per_step": round(constrained_ms, 2),
                      "overhead_pct": round(100 * (constrained_ms / plain_ms - 1), 1),
                      "constraint_ms_per_step": round(inside_ms, 3),
                      "constraint_share_of_plain_step_pct": round(100 * inside_ms / plain_ms, 2),
                      "mask_us_median": round(statistics.median(mask_us)), "mask_us_max": round(max(mask_us)),
                      "runs": args.runs, "new_tokens": args.new_tokens, "threads": args.threads,
                      "sample_output": text[:80]}))


if __name__ == "__main__":
    main()
