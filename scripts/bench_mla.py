"""One MLA layer's decode step in latent space (kv_b folded into q and the output) against expanding every
cached latent through kv_b, at DeepSeek-V2-Lite's attention shape (16 heads, latent 512, RoPE key 64,
nope 128, v 128, dim 2048), random weights, over a contiguous cache of --context tokens. Rounds alternate
the two paths; medians are printed, with the largest difference between their outputs.

    .venv/bin/python scripts/bench_mla.py --context 1024 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.config import ModelConfig  # noqa: E402
from engine.kv_cache import ContiguousKVCache  # noqa: E402
from engine.layers.mla import MLAttention  # noqa: E402
from engine.layers.rope import RopeTable  # noqa: E402

V2_LITE_ATTENTION = {"model_type": "deepseek_v2", "vocab_size": 1000, "hidden_size": 2048, "intermediate_size": 1024,
                     "num_hidden_layers": 1, "num_attention_heads": 16, "kv_lora_rank": 512, "q_lora_rank": None,
                     "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                     "max_position_embeddings": 1 << 16}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.from_hf(V2_LITE_ATTENTION)
    attn, rope, S = MLAttention(config, 0).eval(), RopeTable(config), args.context
    cache = ContiguousKVCache(config, S + 1)
    view = cache.view(0, S)
    attn(torch.randn(1, S, config.dim) * 0.1, *rope.cos_sin(view.positions), view)  # fill the cache
    x = torch.randn(1, 1, config.dim) * 0.1
    times, outputs = {"latent": [], "expanded": []}, {}
    for _ in range(args.rounds):
        for path, absorbs in (("latent", True), ("expanded", False)):
            attn._absorbs = lambda T, absorbs=absorbs: absorbs
            view = cache.view(S, 1)
            cos, sin = rope.cos_sin(view.positions)
            start = time.perf_counter()
            outputs[path] = attn(x, cos, sin, view)
            times[path].append(time.perf_counter() - start)
    for path, ts in times.items():
        print(f"{path:9s} {statistics.median(ts) * 1000:7.2f} ms a layer-step at {S} cached tokens, {args.threads} thread(s)")
    print(f"max |latent - expanded| = {(outputs['latent'] - outputs['expanded']).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
