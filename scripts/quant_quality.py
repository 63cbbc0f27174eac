"""What each quantization costs the default model, over the shipped text: perplexity and the mean
per-token KL divergence / top-1 agreement against the unquantized weights (prints a Markdown table).

Two measurements per mode, because this CPU has no fast int kernels for fp32 activations:
- "weights": a float model holding the mode's dequantized weights, fp32 matmuls over the whole text.
  The exact quantized path computes the same (tests/engine/test_quant.py, <= 1e-4), so this is the
  cost of the weights alone.
- "as run": the engine as users load it (quantized matmuls fed bf16 activations on the CPU), over
  the first --excerpt tokens; the difference to "weights" is the cost of bf16 activations.

    .venv/bin/python scripts/quant_quality.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.engine import Engine  # noqa: E402
from engine.records import LoadOptions
from engine.loaders import default_model_path, load_checkpoint  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.instrumentation.quality import SHIPPED_TEXT, evaluate  # noqa: E402
from engine.quant import dequantized_tensors  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--modes", default="int8,int4-g32,int4-g64,int4-g128")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--tokens", type=int, default=0, help="score only the text's first N tokens (0: all)")
    p.add_argument("--excerpt", type=int, default=1024, help="tokens for the 'as run' measurement (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or default_model_path()
    ckpt = load_checkpoint(path)
    assert ckpt.config.tie_embeddings, "dequantized_tensors treats embed.weight as the tied embedding / LM head"
    ids = ckpt.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"), add_special_tokens=True)
    ids = ids[: args.tokens] if args.tokens else ids
    reference = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    started = time.perf_counter()
    base, _ = evaluate(reference, ids, args.window, args.stride)
    rows.append(("none (fp32)", base.perplexity, 0.0, 1.0, "weights"))
    for mode in modes:
        model = Decoder.from_tensors(ckpt.config, dequantized_tensors(ckpt.tensors, mode))
        ppl, diff = evaluate(model, ids, args.window, args.stride, reference)
        rows.append((mode, ppl.perplexity, diff.mean_kl, diff.agreement, "weights"))
        print(f"  {mode}: {ppl.perplexity:.3f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    excerpt = ids[: args.excerpt]
    ref_ex = base
    if args.excerpt:
        ref_ex, _ = evaluate(reference, excerpt, args.window, args.stride)
        rows.append(("none (fp32)", ref_ex.perplexity, 0.0, 1.0, f"as run, first {len(excerpt)}"))
        for mode in ["auto"] + modes:
            engine = Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant=mode))
            ppl, diff = evaluate(engine.model, excerpt, args.window, args.stride, reference)
            name = "auto (packed Q4_1)" if mode == "auto" else mode
            rows.append((name, ppl.perplexity, diff.mean_kl, diff.agreement, f"as run, first {len(excerpt)}"))
            print(f"  {name} as run: {ppl.perplexity:.3f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
                  flush=True)
    print(f"Text: {SHIPPED_TEXT.name}, {len(ids)} tokens; window {args.window}, stride {args.stride}; "
          f"{time.perf_counter() - started:.0f} s")
    print("| quantization | measured | perplexity | vs fp32 | mean KL (nats) | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for name, ppl, kl, agree, how in rows:
        ref = base.perplexity if how == "weights" else ref_ex.perplexity
        print(f"| {name} | {how} | {ppl:.3f} | {ppl / ref - 1:+.2%} | {kl:.4f} | {agree:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
