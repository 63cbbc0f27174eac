"""`python -m engine bench --compare`: our engine beside llama.cpp and HF transformers, one ratio table.

Every engine gets the same token ids (our tokenizer's, so no engine's tokenizer changes the workload),
runs in its own subprocess (peak RSS is its own), and the engines alternate run by run so that
machine noise hits them alike; figures are medians. Definitions shared by every engine:
  prefill tok/s  prompt tokens / time of one forward over the whole prompt
  decode tok/s   (new tokens - 1) / (time to generate them - time to the first one), greedy, EOS ignored
llama-cpp-python and transformers are optional: an engine that is not installed is left out. The
Q4_0 variant is the shipped GGUF requantized by llama.cpp itself (its fastest 4-bit format here), or the
file as it is when it is Q4_0 already (`--model 1b`, engine/bench/big_model.py), where the Q4_1 row is left out.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from engine.bench.common import peak_rss_bytes, prompt_ids

LLAMA_FTYPE_MOSTLY_Q4_0, LLAMA_FTYPE_MOSTLY_Q4_1 = 2, 3  # llama.cpp's general.file_type values

# name -> (kind, detail); availability is checked before running
ENGINES = {
    "glassbox": ("ours", "auto"),
    "glassbox-1thread": ("ours", "auto"),
    "glassbox PyTorch kernels": ("ours", "auto"),  # GLASSBOX_NO_KERNELS=1: today's fallback, side by side
    "llama.cpp Q4_1": ("llama", "shipped"),
    "llama.cpp Q4_0": ("llama", "q4_0"),
    "hf fp32": ("hf", "float32"),
    "hf bf16": ("hf", "bfloat16"),
}


def _available(kind: str) -> bool:
    import importlib.util

    return kind == "ours" or importlib.util.find_spec({"llama": "llama_cpp", "hf": "transformers"}[kind]) is not None


def _timed_decode(first, rest) -> tuple[float, float]:
    """(seconds to the first token, seconds for all of them) for two calls run back to back."""
    t0 = time.perf_counter()
    first()
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    rest()
    return ttft, time.perf_counter() - t0


def worker_ours(job: dict) -> dict:
    import torch

    from engine.engine import Engine
    from engine.records import LoadOptions
    from engine.records import GenerationDone, SamplingParams

    torch.set_num_threads(job["threads"])
    engine = Engine.load(job["model"], LoadOptions(device="cpu", quant=job["detail"]))
    prompt, decode_prompt, n = job["prompt"], job["prompt"][:32], job["new_tokens"]
    run = lambda ids, k: [x for x in engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=k,  # noqa: E731
                                                                         ignore_eos=True))
                          if isinstance(x, GenerationDone)][0]
    run(prompt[:32][::-1], 4)  # warm-up (first calls allocate); not a prefix of the prompt, so nothing is reused
    prefill = run(prompt, 1)
    done = run(decode_prompt, n)  # its prompt is a cached prefix now: only decode is timed
    from engine.quant import kernels

    return {"prefill_tok_s": len(prompt) / (prefill.prefill_ms / 1000), "decode_tok_s": done.decode_tokens_per_s,
            "tokens": list(done.token_ids), "kernels": kernels.isa()}


def worker_llama(job: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith

    path = job["model"]
    if job["detail"] == "q4_0" and not _is_q4_0(path):
        path = _requantized_q4_0(path)
    # n_threads_batch too: llama-cpp-python's prefill otherwise takes every core whatever n_threads says (a
    # "1-thread" llama.cpp prefilled on 2 before this).
    llm = Llama(model_path=path, n_ctx=2048, n_batch=512, n_threads=job["threads"], n_threads_batch=job["threads"],
                verbose=False)
    prompt, decode_prompt, n = job["prompt"], job["prompt"][:32], job["new_tokens"]
    eos, n_vocab = llm.token_eos(), llm.n_vocab()

    first_token_at = [0.0]

    def greedy(ids, k):
        llm.reset()  # otherwise llama.cpp reuses a matching prefix of the last run
        llm.eval(ids)
        out = []
        for _ in range(k):
            # the last position's logits from the context: llm.scores is filled only with logits_all=True
            # in llama-cpp-python 0.3.x (it stayed zeros, so every 'greedy' token read as id 0)
            scores = np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
            scores[eos] = -np.inf  # EOS ignored, as in the other engines
            out.append(int(scores.argmax()))
            if len(out) == 1:
                first_token_at[0] = time.perf_counter()
            if len(out) < k:
                llm.eval([out[-1]])
        return out

    greedy(prompt[:32][::-1], 4)
    t0 = time.perf_counter()
    greedy(prompt, 1)
    prefill_s = time.perf_counter() - t0
    # decode timed inside one run, from its first token to its last: (total - ttft) of two separate runs
    # went negative or near zero on a loaded machine (6e10 tok/s once)
    tokens = greedy(decode_prompt, n)
    decode_s = time.perf_counter() - first_token_at[0]
    return {"prefill_tok_s": len(prompt) / prefill_s, "decode_tok_s": (n - 1) / decode_s, "tokens": tokens}


def _file_type(path: str) -> int | None:
    """general.file_type of a GGUF (llama.cpp's LLAMA_FTYPE_*), None for a model directory."""
    from engine.loaders.gguf_file import read_metadata

    return read_metadata(path).get("general.file_type") if path.endswith(".gguf") else None


def _is_q4_0(path: str) -> bool:
    return _file_type(path) == LLAMA_FTYPE_MOSTLY_Q4_0


def _requantized_q4_0(path: str) -> str:
    import llama_cpp

    out = os.path.join(tempfile.gettempdir(), "glassbox-bench-" + os.path.basename(path).replace(".gguf", ".Q4_0.gguf"))
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(path.encode(), out.encode(), params) != 0:
            raise RuntimeError("llama.cpp could not requantize the model to Q4_0")
    return out


def worker_hf(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job["threads"])
    path = job["model"]
    kw = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path) if kw else path,
                                                 dtype=getattr(torch, job["detail"]), **kw).eval()
    prompt, n = torch.tensor([job["prompt"]]), job["new_tokens"]
    ids = torch.tensor([job["prompt"][:32]])
    gen = lambda k: model.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False,  # noqa: E731
                                   pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        gen(4)  # warm-up
        t0 = time.perf_counter()
        model(prompt)
        prefill_s = time.perf_counter() - t0
        ttft, total = _timed_decode(lambda: gen(1), lambda: gen(n))
        tokens = gen(n)[0, ids.shape[1]:].tolist()
    return {"prefill_tok_s": len(job["prompt"]) / prefill_s, "decode_tok_s": (n - 1) / max(total - ttft, 1e-9),
            "tokens": tokens}


def run_worker(name: str, job: dict) -> dict:
    kind, detail = ENGINES[name]
    job = dict(job, kind=kind, detail=detail, threads=1 if name.endswith("1thread") else job["threads"])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        env = dict(os.environ, GLASSBOX_NO_KERNELS="1") if name.endswith("PyTorch kernels") else None
        out = subprocess.run([sys.executable, "-m", "engine.bench.compare", f.name], capture_output=True, text=True,
                             env=env)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(model: str | None, runs: int, threads: int, prompt_tokens: int, new_tokens: int,
            engines: list[str] | None = None) -> dict:
    from engine.loaders import default_model_path, load_checkpoint

    label = "default model" if model is None else os.path.basename(str(model).rstrip("/"))
    model = str(model or default_model_path())
    if model.endswith(".gguf"):  # the tokenizer alone: loading a ~1B model's weights only to tokenize took long
        from engine.loaders.gguf_file import read_metadata
        from engine.text.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_gguf_metadata(read_metadata(model), model)
    else:
        tokenizer = load_checkpoint(model, keep_packed=True).tokenizer
    prompt = prompt_ids(tokenizer.encode, prompt_tokens)
    unknown = set(engines or ()) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    engines = ["glassbox"] + [n for n in engines if n != "glassbox"] if engines else list(ENGINES)
    names = [n for n in engines if _available(ENGINES[n][0])
             and not (n.endswith("1thread") and threads == 1)]
    skipped, file_type = {}, _file_type(model)
    if "llama.cpp Q4_1" in names and file_type != LLAMA_FTYPE_MOSTLY_Q4_1:
        # that row runs the file as it is: on a Q4_0 file it would be the Q4_0 row under a wrong name
        names.remove("llama.cpp Q4_1")
        skipped["llama.cpp Q4_1"] = (f"the file is not Q4_1 (general.file_type {file_type}); 'llama.cpp Q4_0' runs "
                                     + ("it as it is" if file_type == LLAMA_FTYPE_MOSTLY_Q4_0 else "it requantized"))
    job = {"model": model, "prompt": prompt, "new_tokens": new_tokens, "threads": threads}
    cpu_before = psutil.cpu_times()
    results: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(runs):
        for n in names:  # alternate so drift affects every engine alike
            results[n].append(run_worker(n, job))
    cpu_after = psutil.cpu_times()
    table = {}
    for n, rs in results.items():
        table[n] = {k: statistics.median(r[k] for r in rs) for k in ("prefill_tok_s", "decode_tok_s", "peak_rss")}
        table[n]["tokens"] = rs[-1]["tokens"]
        # each run's own figures too: paired ratios (run i of one engine against run i of another) need them
        table[n]["decode_runs"] = [r["decode_tok_s"] for r in rs]
        table[n]["prefill_runs"] = [r["prefill_tok_s"] for r in rs]
        if "kernels" in rs[-1]:
            table[n]["kernels"] = rs[-1]["kernels"]
    return {"config": {"model": model, "label": label, "runs": runs, "threads": threads,
                       "prompt_tokens": len(prompt), "new_tokens": new_tokens}, "skipped": skipped,
            "machine_busy_s": round((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 1),
            "load_average": os.getloadavg(), "engines": table}


def print_table(result: dict) -> None:
    table = result["engines"]
    ours = table["glassbox"]
    cfg = result["config"]
    print(f"{cfg.get('label', 'default model')}, {cfg['threads']} threads, {cfg['prompt_tokens']}-token prefill, "
          f"{cfg['new_tokens']} new tokens after a 32-token prompt, medians of {cfg['runs']}")
    print(f"| engine | prefill tok/s | decode tok/s | peak RSS MB | glassbox prefill / it | glassbox decode / it "
          f"| glassbox RSS / it | greedy tokens equal to glassbox |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        same = sum(a == b for a, b in zip(r["tokens"], ours["tokens"]))
        print(f"| {name} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['peak_rss'] / 2**20:.0f} | "
              f"{ours['prefill_tok_s'] / r['prefill_tok_s']:.2f}x | {ours['decode_tok_s'] / r['decode_tok_s']:.2f}x | "
              f"{ours['peak_rss'] / r['peak_rss']:.2f}x | {same}/{len(ours['tokens'])} |")
    for name, r in table.items():  # medians of run-by-run ratios: robust to drift that hits a whole round
        if name != "glassbox" and "decode_runs" in r and len(r["decode_runs"]) == len(ours.get("decode_runs", ())):
            decode = statistics.median(a / b for a, b in zip(ours["decode_runs"], r["decode_runs"]))
            prefill = statistics.median(a / b for a, b in zip(ours["prefill_runs"], r["prefill_runs"]))
            print(f"paired, glassbox / {name}: decode {decode:.2f}x, prefill {prefill:.2f}x")
    for name, why in result.get("skipped", {}).items():
        print(f"{name}: left out, {why}")
    print(f"glassbox kernels: {ours.get('kernels', '?')}")
    print(f"(CPU seconds used on the machine meanwhile: {result['machine_busy_s']}; "
          f"load average at the end {result['load_average'][0]:.1f})")


if __name__ == "__main__":  # a worker: python -m engine.bench.compare JOB.json
    with open(sys.argv[1]) as f:
        job = json.load(f)
    worker = {"ours": worker_ours, "llama": worker_llama, "hf": worker_hf}[job["kind"]]
    result = worker(job)
    result["peak_rss"] = peak_rss_bytes()
    print(json.dumps(result))
