"""What MoEfication costs: perplexity of a MoEfied model at several top-k next to its dense source,
and its routers' load balance (engine.moefy.router_stats) over the same text. Plain forwards, no paging."""
from __future__ import annotations

import dataclasses
import time

from engine.instrumentation.quality import SHIPPED_TEXT, perplexity
from engine.moefy.router_stats import router_stats


def set_top_k(model, k: int) -> None:
    """Route every MoE layer of `model` to k experts from now on (the weights stay as they are)."""
    for block in model.layers:
        if block.is_moe:
            block.mlp.moe = dataclasses.replace(block.mlp.moe, n_experts_per_tok=k)


def report(dense_path, moe_path, top_ks: list[int], window: int = 512, stride: int = 256,
           max_tokens: int | None = None, log=print) -> dict:
    from engine.loaders import load_checkpoint
    from engine.model import Decoder

    text = SHIPPED_TEXT.read_text(encoding="utf-8")
    rows = []
    dense = load_checkpoint(dense_path)
    ids = dense.tokenizer.encode(text)[:max_tokens]
    started = time.perf_counter()
    ppl = perplexity(Decoder.from_tensors(dense.config, dense.tensors), ids, window, stride)
    rows.append({"model": "dense", "top_k": None, "perplexity": round(ppl.perplexity, 3),
                 "seconds": round(time.perf_counter() - started, 1)})
    log(rows[-1])
    del dense
    moe = load_checkpoint(moe_path)
    model = Decoder.from_tensors(moe.config, moe.tensors)
    for k in top_ks:
        set_top_k(model, k)
        started = time.perf_counter()
        ppl = perplexity(model, ids, window, stride)
        stats = router_stats(model, ids, window)
        rows.append({"model": "moe", "top_k": k, "perplexity": round(ppl.perplexity, 3),
                     "balance_mean": round(sum(s.balance for s in stats) / len(stats), 4),
                     "balance_max": round(max(s.balance for s in stats), 4),
                     "min_token_fraction": round(min(min(s.token_fraction) for s in stats), 5),
                     "seconds": round(time.perf_counter() - started, 1)})
        log(rows[-1])
    return {"text": SHIPPED_TEXT.name, "tokens": len(ids), "window": window, "stride": stride, "rows": rows}
