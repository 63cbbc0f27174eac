"""`python -m engine bench`: prefill and decode speed, time to first token and peak memory.

Each engine runs in its own subprocess (so peak RSS is its own), the variants alternate run
by run (so machine noise hits them alike), and medians are reported. HF transformers is the
reference when it is installed; it is never required.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import psutil

from engine.bench.common import peak_rss_bytes, prompt_ids


def _worker_ours(args) -> dict:
    import torch

    from engine.engine import Engine
    from engine.records import LoadOptions
    from engine.records import GenerationDone, SamplingParams

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rss_before = psutil.Process().memory_info().rss
    engine = Engine.load(args.model, LoadOptions(device=args.device, dtype=args.dtype, quant=args.quant))
    load_s = time.perf_counter() - t0
    # weights as they sit in memory: the bytes of every parameter/packed tensor, and what loading
    # added to the process (RSS also holds the tokenizer, the KV pool's touched pages, allocator slack)
    weight_bytes = sum(engine.model.weight_bytes().values())
    load_rss_bytes = psutil.Process().memory_info().rss - rss_before
    prompt = prompt_ids(engine.tokenizer.encode, args.prompt_tokens)
    decode_prompt = prompt[:32]
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    prefill = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True))
    done = [x for x in prefill if isinstance(x, GenerationDone)][0]
    run = [x for x in engine.generate(decode_prompt, params) if isinstance(x, GenerationDone)][0]
    waste, contiguous_waste = _kv_waste(engine, prompt_ids(engine.tokenizer.encode, 1200))
    return {"prefill_tok_s": len(prompt) / (done.prefill_ms / 1000), "ttft_ms": run.prefill_ms,
            "decode_tok_s": run.decode_tokens_per_s, "load_s": load_s, "peak_rss": peak_rss_bytes(),
            "kv_waste_pct": waste, "kv_contiguous_waste_pct": contiguous_waste,
            "weight_bytes": weight_bytes, "load_rss_bytes": load_rss_bytes}


def _kv_waste(engine, prompt: list[int]) -> tuple[float, float]:
    """KV memory left unused by eight live sequences of mixed lengths: paged vs contiguous caches."""
    from engine.records import GenerationRequest, SamplingParams

    ids = [engine.submit(GenerationRequest(tuple(prompt[3 * i: 3 * i + n]), SamplingParams(temperature=0,
                                           max_new_tokens=4, ignore_eos=True)))
           for i, n in enumerate((97, 180, 233, 310, 402, 515, 640, 777))]
    engine.step()
    mem = engine.memory()
    for i in ids:
        engine.cancel(i)
    engine.step()
    per_token = mem.kv_bytes_per_block / mem.kv_block_size
    contiguous = 100 * (mem.kv_contiguous_bytes - mem.kv_tokens * per_token) / mem.kv_contiguous_bytes
    return mem.kv_waste_pct, contiguous


def _worker_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.loaders import default_model_path

    torch.set_num_threads(args.threads)
    path = default_model_path() if args.model is None else args.model
    kw = {"gguf_file": os.path.basename(path)} if str(path).endswith(".gguf") else {}
    where = os.path.dirname(path) if kw else path
    dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw).eval()
    tok = AutoTokenizer.from_pretrained(where, **kw)
    load_s = time.perf_counter() - t0
    prompt = prompt_ids(lambda t: tok(t, add_special_tokens=False)["input_ids"], args.prompt_tokens)
    with torch.no_grad():
        t0 = time.perf_counter()
        model(torch.tensor([prompt]))
        prefill_s = time.perf_counter() - t0
        ids = torch.tensor([prompt[:32]])
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                       pad_token_id=0)
        total = time.perf_counter() - t0
    return {"prefill_tok_s": len(prompt) / prefill_s, "ttft_ms": ttft * 1000,
            "decode_tok_s": (args.new_tokens - 1) / max(total - ttft, 1e-9), "load_s": load_s,
            "peak_rss": peak_rss_bytes()}


def _run_worker(engine: str, args) -> dict:
    """`engine` is "hf" or "ours" / "ours:<quant mode>"."""
    engine, _, quant = engine.partition(":")
    cmd = [sys.executable, "-m", "engine", "bench", "--worker", engine, "--quant", quant or args.quant.split(",")[0],
           "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--device", args.device,
           "--dtype", args.dtype] + (["--model", args.model] if args.model else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} benchmark failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(args) -> dict:
    modes = [m.strip() for m in args.quant.split(",") if m.strip()]
    engines = ["ours"] if len(modes) == 1 else [f"ours:{m}" for m in modes]
    if not args.no_reference:
        try:
            import transformers  # noqa: F401

            engines.append("hf")
        except ImportError:
            pass
    cpu_before = psutil.cpu_times()
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.runs):
        for e in engines:  # alternate so drift affects both alike
            runs[e].append(_run_worker(e, args))
    cpu_after = psutil.cpu_times()
    result = {"config": {k: getattr(args, k) for k in ("model", "prompt_tokens", "new_tokens", "runs", "threads",
                                                        "device", "dtype")},
              "machine_busy_s": round((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 1)}
    for e, rs in runs.items():
        result[e] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    if "hf" in result and "ours" in result:
        result["ratio_vs_hf"] = {k: result["ours"][k] / result["hf"][k] for k in ("prefill_tok_s", "decode_tok_s")}
    if len(modes) > 1:  # each quantization against the first mode listed (normally none)
        base = result[f"ours:{modes[0]}"]
        result["ratio_vs_" + modes[0]] = {
            m: {"decode": result[f"ours:{m}"]["decode_tok_s"] / base["decode_tok_s"],
                "prefill": result[f"ours:{m}"]["prefill_tok_s"] / base["prefill_tok_s"],
                "weights": result[f"ours:{m}"]["weight_bytes"] / base["weight_bytes"]} for m in modes}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine bench")
    p.add_argument("--model", help="a model path, or '1b': a ~1B llama of random Q4_0 weights (TinyLlama-1.1B's "
                                    "shapes), written once into the cache (engine/bench/big_model.py)")
    p.add_argument("--prompt-tokens", type=int, help="default 512 (128 with --model 1b)")
    p.add_argument("--new-tokens", type=int, help="default 128 (32 with --model 1b)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quant", default="auto",
                   help="weights of our engine; a comma-separated list benchmarks each side by side, "
                        "e.g. none,int8,int4-g32,auto")
    p.add_argument("--no-reference", action="store_true", help="skip HF transformers")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--compare", action="store_true",
                   help="ours vs llama.cpp (Q4_1 as shipped, Q4_0) and HF transformers (fp32, bf16), each when "
                        "installed: one ratio table (engine/bench/compare.py)")
    p.add_argument("--engines", help="with --compare: a comma-separated subset of " + ", ".join(
        ["glassbox", "glassbox-1thread", "glassbox PyTorch kernels", "llama.cpp Q4_1", "llama.cpp Q4_0", "hf fp32",
         "hf bf16"]) + " (glassbox is always run)")
    p.add_argument("--kernels", choices=["default", "1b"],
                   help="one token's matmuls alone in this model's shapes, our kernels vs PyTorch's (engine/bench/kernels.py)")
    p.add_argument("--count-ops", action="store_true",
                   help="operator calls per decoded token, with our kernels and with PyTorch's (engine/bench/ops.py)")
    args = p.parse_args(argv)
    big = args.model == "1b"
    if big:  # ~7x the default model's bytes per token: smaller defaults keep one run within minutes on 2 cores
        from engine.bench.big_model import big_model_path

        args.model = str(big_model_path())
    args.prompt_tokens = args.prompt_tokens or (128 if big else 512)
    args.new_tokens = args.new_tokens or (32 if big else 128)
    if args.kernels:
        from engine.bench.kernels import measure, print_result

        measured = measure(args.kernels, args.threads, max(args.runs, 3))
        print(json.dumps(measured, indent=2)) if args.json else print_result(measured)
        return 0
    if args.count_ops:
        from engine.bench.ops import compare_counts, print_counts

        counts = compare_counts(args.model, args.threads)
        print(json.dumps(counts, indent=2)) if args.json else print_counts(counts)
        return 0
    if args.compare:
        from engine.bench.compare import compare, print_table

        engines = [e.strip() for e in args.engines.split(",")] if args.engines else None
        result = compare(args.model, args.runs, args.threads, args.prompt_tokens, args.new_tokens, engines)
        print(json.dumps(result, indent=2)) if args.json else print_table(result)
        return 0
    if args.worker:
        print(json.dumps((_worker_ours if args.worker == "ours" else _worker_hf)(args)))
        return 0
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'engine':14} {'prefill tok/s':>14} {'decode tok/s':>13} {'TTFT ms':>9} {'peak RSS MB':>12} "
          f"{'weights MB':>11}")
    for e, r in result.items():
        if isinstance(r, dict) and "decode_tok_s" in r:
            weights = f"{r['weight_bytes'] / 1e6:11.1f}" if "weight_bytes" in r else f"{'':11}"
            print(f"{e:14} {r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.1f} {r['ttft_ms']:9.1f} "
                  f"{r['peak_rss'] / 2**20:12.0f} {weights}")
    for key, ratios in result.items():
        if key.startswith("ratio_vs_") and key != "ratio_vs_hf":
            for m, r in ratios.items():
                print(f"{m} / {key[9:]}: decode {r['decode']:.2f}x, prefill {r['prefill']:.2f}x, weights {r['weights']:.1%}")
    if "ratio_vs_hf" in result:
        print("ours / hf: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratio_vs_hf"].items()))
    ours = next(r for e, r in result.items() if e.startswith("ours"))
    print(f"KV waste, 8 live sequences of mixed length: paged {ours['kv_waste_pct']:.2f}% "
          f"vs contiguous max-length caches {ours['kv_contiguous_waste_pct']:.1f}%")
    print(f"(CPU seconds used on the machine meanwhile: {result['machine_busy_s']})")
    return 0
