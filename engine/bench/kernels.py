"""`python -m engine bench --kernels`: one decoded token's matmuls alone, our kernels against PyTorch's.

Random 4-bit weights in the shapes of a model's layers (the default model's, or a ~1B llama's, where
decode is bound by memory bandwidth), multiplied by one activation row each, as a decode step does:
milliseconds per token (median of alternating rounds), the weight bytes read per token, and the
bandwidth that implies; the floor of a token is those bytes over the machine's memory bandwidth.
No model file is read or written: only the matmuls' cost is measured, not an engine's.
"""
from __future__ import annotations

import statistics
import time

# (dim, hidden, layers, q heads * head_dim, kv heads * head_dim, vocab): q/k/v fused, gate/up fused
SHAPES = {
    "default": (576, 1536, 30, 576, 192, 49152),  # SmolLM2-135M
    "1b": (2048, 5632, 22, 2048, 256, 32000),  # TinyLlama-1.1B's shapes
}


def _weights(shape: str):
    import torch

    from engine.quant import Int4Weight, Int8Weight

    dim, hidden, layers, q, kv, vocab = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    per_layer = [(q + 2 * kv, dim), (dim, q), (2 * hidden, dim), (dim, hidden)]
    # one set of layer weights per layer: the same object reused would stay in cache and flatter the kernel
    made = [Int4Weight.quantize(torch.randn(n, k, generator=g), 32) for _ in range(layers) for n, k in per_layer]
    head = Int8Weight.quantize(torch.randn(vocab, dim, generator=g))
    return made + [head]


def measure(shape: str, threads: int, rounds: int) -> dict:
    import torch

    from engine.quant import kernels

    torch.set_num_threads(threads)
    variants = {}
    for name in ("glassbox", "pytorch"):
        if name == "glassbox" and not kernels.available():
            continue
        fresh = _weights(shape)
        if name == "pytorch":
            with kernels.disabled():
                variants[name] = [w.to("cpu", torch.bfloat16) for w in fresh]
        else:
            variants[name] = [w.to("cpu", torch.bfloat16) for w in fresh]
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, ws in variants.items():  # alternate: drift hits both alike
            dtype = ws[0].compute_dtype
            inputs = {k: torch.randn(1, k, dtype=dtype) for k in {w.shape[1] for w in ws}}
            t0 = time.perf_counter()
            for w in ws:
                w.matmul(inputs[w.shape[1]])
            times[name].append(time.perf_counter() - t0)
    out = {"shape": shape, "threads": threads, "kernels": kernels.isa() if kernels.available() else "pytorch"}
    for name, ws in variants.items():
        ms = statistics.median(times[name]) * 1e3
        read = sum(w.nbytes for w in ws)
        out[name] = {"ms_per_token": ms, "weight_mb": read / 1e6, "gb_per_s": read / ms / 1e6}
    if len(variants) == 2:
        out["paired_speedup"] = statistics.median(b / a for a, b in zip(times["glassbox"], times["pytorch"]))
    return out


def print_result(r: dict) -> None:
    print(f"{r['shape']} model's per-token matmuls, {r['threads']} threads, our kernels: {r['kernels']}")
    for name in ("glassbox", "pytorch"):
        if name in r:
            v = r[name]
            print(f"  {name:9} {v['ms_per_token']:7.2f} ms/token  {v['weight_mb']:7.1f} MB of weights  "
                  f"{v['gb_per_s']:5.1f} GB/s")
    if "paired_speedup" in r:
        print(f"  glassbox / pytorch, median of paired rounds: {r['paired_speedup']:.2f}x faster")
