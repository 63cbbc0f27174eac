"""Speculative decoding vs plain decoding, side by side in one process (prints a table, or JSON).

Tasks: (a) input-grounded (rewrite, correct or summarise a given paragraph: prompt lookup's home ground)
and (b) open chat.
Variants: plain, then each drafter. Runs alternate variant by variant so machine noise hits them alike;
medians are reported. Greedy decoding, so each variant's output can be compared with plain's.

    .venv/bin/python scripts/bench_speculative.py --threads 2 --runs 2 --new-tokens 128
    python3 scripts/bench_speculative.py --device cuda --dtype bfloat16   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARAGRAPH = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He lit the great lamp, wound "
    "the clockwork that turned the lens, and wrote the weather in his logbook. Ships passing the rocky point "
    "trusted the beam to guide them safely into the harbour, and the fishermen said that as long as the light "
    "was burning, nobody in the village needed to fear the winter storms."
)
TYPOS = PARAGRAPH.replace("climbed", "climbd").replace("evening", "evenning").replace("weather", "wether") \
    .replace("safely", "safley").replace("village", "vilage")
# Input-grounded tasks first: a heavy rewrite (every verb changes), a light one (five typos), a summary.
TASKS = {
    "rewrite": "Rewrite the following paragraph in the past perfect tense, keeping everything else the same:\n\n"
               + PARAGRAPH,
    "fix": "Correct the spelling mistakes in this paragraph and give it back in full:\n\n" + TYPOS,
    "summary": "Summarise this paragraph in two sentences:\n\n" + PARAGRAPH,
    "chat": "Tell me about the history of lighthouses and why they matter to sailors.",
}


def run_once(engine, prompt_ids, new_tokens, drafter, k) -> dict:
    from engine.records import GenerationRequest, RequestDone, SamplingParams, SpeculativeOptions, StepRecord

    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    spec = SpeculativeOptions(drafter, k) if drafter else SpeculativeOptions()
    rid = engine.submit(GenerationRequest(tuple(prompt_ids), params, speculative=spec))
    forwards0 = engine.counters[1]
    last, done = None, None
    while done is None:
        for item in engine.step():
            if isinstance(item, StepRecord) and item.spec is not None:
                last = item.spec
            elif isinstance(item, RequestDone) and item.request_id == rid:
                done = item
    if done.error:
        raise RuntimeError(done.error)
    n = len(done.results[0].token_ids)
    out = {"tok_s": (n - 1) / (done.decode_ms / 1000), "ids": list(done.results[0].token_ids),
           "tokens_per_forward": (n - 1) / max(engine.counters[1] - forwards0 - 1, 1)}
    if last is not None:
        out |= {"acceptance": last.acceptance_rate, "mean_accepted": last.mean_accepted,
                "engine_speedup": last.speedup}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quant", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--drafters", default="ngram,self-layers:24,self-int4,path",
                   help="comma-separated; 'path' means the target's own file (a same-size draft)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from engine.engine import Engine
    from engine.records import LoadOptions
    from engine.loaders import default_model_path

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model, LoadOptions(device=args.device, dtype=args.dtype, quant=args.quant))
    path = str(args.model or default_model_path())
    variants, skipped = [("plain", None)], {}
    for name in filter(None, args.drafters.split(",")):  # build every drafter before timing anything
        drafter = path if name == "path" else name
        try:
            engine.prepare_drafter(drafter)
            variants.append((name, drafter))
        except Exception as e:  # e.g. a kernel this device lacks: report it, measure the rest
            skipped[name] = f"{type(e).__name__}: {e}"
    prompts = {t: engine.chat_prompt_ids([{"role": "user", "content": text}]) for t, text in TASKS.items()}
    runs = {(t, v): [] for t in TASKS for v, _ in variants}
    t0 = time.perf_counter()
    for _ in range(args.runs):
        for task, ids in prompts.items():
            for name, drafter in variants:
                runs[task, name].append(run_once(engine, ids, args.new_tokens, drafter, args.k))
    result = {"config": vars(args) | {"device_name": _device_name(args.device), "torch": torch.__version__,
                                      "wall_s": round(time.perf_counter() - t0, 1)}, "rows": [],
              "skipped": skipped}
    for task in TASKS:
        plain = statistics.median(r["tok_s"] for r in runs[task, "plain"])
        for name, _ in variants:
            rs = runs[task, name]
            row = {"task": task, "variant": name, "tok_s": statistics.median(r["tok_s"] for r in rs)}
            row["speedup"] = row["tok_s"] / plain
            row["tokens_per_forward"] = statistics.median(r["tokens_per_forward"] for r in rs)
            row["same_as_plain"] = all(r["ids"] == runs[task, "plain"][0]["ids"] for r in rs)
            for key in ("acceptance", "mean_accepted", "engine_speedup"):
                if key in rs[0]:
                    row[key] = statistics.median(r[key] for r in rs)
            result["rows"].append(row)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'task':8} {'variant':16} {'tok/s':>7} {'speedup':>8} {'accept':>7} {'mean acc':>9} {'tok/fwd':>8} "
          f"{'same':>5}")
    for r in result["rows"]:
        acc = f"{r['acceptance']:.0%}" if "acceptance" in r else "-"
        mean = f"{r['mean_accepted']:.2f}" if "mean_accepted" in r else "-"
        print(f"{r['task']:8} {r['variant']:16} {r['tok_s']:7.1f} {r['speedup']:7.2f}x {acc:>7} {mean:>9} "
              f"{r['tokens_per_forward']:8.2f} {str(r['same_as_plain']):>5}")
    print(json.dumps(result["config"]))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
