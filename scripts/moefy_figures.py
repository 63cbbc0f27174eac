"""The MoEfication quality table of docs/benchmarks.md: perplexity of the dense default model and of
a MoEfied folder at top-k 8/4/2/1 on the shipped text's first 1,024 tokens (in the routers' fit data)
and on tokens 4,096 onwards (not in it), with the router statistics per k.

    .venv/bin/python scripts/moefy_figures.py --moe DIR [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.loaders import load_checkpoint  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.moefy.report import set_top_k  # noqa: E402
from engine.instrumentation.quality import SHIPPED_TEXT, perplexity  # noqa: E402
from engine.moefy.router_stats import router_stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moe", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fit-tokens", type=int, default=4096, help="prose tokens the routers were fit on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense = load_checkpoint(None)
    ids = dense.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"))
    texts = {"first_1024": ids[:1024], "unseen": ids[args.fit_tokens:]}
    model = Decoder.from_tensors(dense.config, dense.tensors)
    print(json.dumps({"model": "dense", **{name: round(perplexity(model, t, 512, 256).perplexity, 3)
                                           for name, t in texts.items()}}), flush=True)
    moe = load_checkpoint(args.moe)
    model = Decoder.from_tensors(moe.config, moe.tensors)
    for k in (moe.config.moe.n_experts, 4, 2, 1):
        set_top_k(model, k)
        stats = router_stats(model, texts["first_1024"])
        balance = [s.balance for s in stats]
        fractions = [f for s in stats for f in s.token_fraction]
        print(json.dumps({"top_k": k, **{name: round(perplexity(model, t, 512, 256).perplexity, 3)
                                         for name, t in texts.items()},
                          "balance_mean": round(sum(balance) / len(balance), 3), "balance_min": round(min(balance), 3),
                          "balance_max": round(max(balance), 3), "f_min": round(min(fractions), 4),
                          "f_max": round(max(fractions), 4), "moe_layers": len(stats)}), flush=True)


if __name__ == "__main__":
    main()
