"""Served throughput and time to first token with 1, 4 and 8 concurrent streaming clients: `glassbox serve`
beside llama.cpp's server (llama-cpp-python[server]) on the same GGUF, same prompts, same settings.

Each server runs in its own process on a loopback port with the same thread count; the client (this
process) sends C streaming chat completions at once (distinct prompts from one fixed list, greedy,
max_tokens fixed) and times each one. Servers alternate round by round so machine noise hits both
alike; figures are medians over rounds. Definitions:
  TTFT            seconds from sending a request to its first content chunk (median over the C clients)
  throughput      content chunks received by all C clients / wall time from the first send to the last end
  tokens          content chunks (both servers stream one chunk per generated token)
llama-cpp-python's server answers one request at a time (it has no parallel slots; started with
--interrupt_requests False so that a new request waits instead of cutting the running one off); ours batches them.

    python scripts/bench_serve.py --llama-python /tmp/llamavenv/bin/python --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import urllib.error
import urllib.request

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in the morning.",
    "What are the main differences between rivers and canals?",
    "Write a letter to a friend about learning to bake bread.",
    "Explain why the sky looks blue during the day and red at sunset.",
    "Describe how bees make honey and why it matters to farmers.",
    "Write a travel guide paragraph about a small mountain village.",
]
CONCURRENCY = (1, 4, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, model: str, threads: int, llama_python: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "glassbox":
        cmd = [sys.executable, "-m", "app", "serve", model, "--port", str(port), "--threads", str(threads)]
    else:
        cmd = [llama_python, "-m", "llama_cpp.server", "--model", model, "--port", str(port), "--host", "127.0.0.1",
               "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096", "--n_batch", "512",
               # by default a new request interrupts the one being answered; queue them instead, as clients expect
               "--interrupt_requests", "False", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{kind} server did not answer within 180 s")


def stream_one(base: str, model: str, prompt: str, max_tokens: int, out: dict) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first, chunks = None, 0
    request = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        for raw in r:  # server-sent events, one line at a time as they arrive
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
    out.update(ttft=first if first is not None else float("nan"), chunks=chunks, end=time.perf_counter())


def model_id(base: str) -> str:
    with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
        return json.load(r)["data"][0]["id"]


def run_clients(base: str, clients: int, max_tokens: int) -> dict:
    results = [{} for _ in range(clients)]
    model = model_id(base)
    threads = [threading.Thread(target=stream_one, args=(base, model, PROMPTS[i % len(PROMPTS)], max_tokens, results[i]))
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["chunks"] for r in results)
    return {"ttft_s": statistics.median(r["ttft"] for r in results), "tok_s": tokens / wall, "tokens": tokens,
            "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF file (default: the shipped SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--llama-python", default="/tmp/llamavenv/bin/python",
                   help="a Python with llama-cpp-python[server] installed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--servers", default="glassbox,llama.cpp", help="which servers to run (comma-separated)")
    p.add_argument("--json", help="also write the raw figures here")
    args = p.parse_args()
    if args.model is None:
        from engine.loaders import default_model_path

        args.model = str(default_model_path())
    kinds = args.servers.split(",")
    raw: dict[str, dict[int, list[dict]]] = {k: {c: [] for c in CONCURRENCY} for k in kinds}
    for rnd in range(args.rounds):
        for kind in (kinds if rnd % 2 == 0 else kinds[::-1]):
            proc, base = start_server(kind, args.model, args.threads, args.llama_python)
            try:
                warm = {}  # first calls allocate; a prompt of its own, so no timed request finds its prefix cached
                stream_one(base, model_id(base), "Say hello.", 8, warm)
                for c in CONCURRENCY:
                    raw[kind][c].append(run_clients(base, c, args.max_tokens))
                    print(f"round {rnd} {kind:9} clients {c}: {raw[kind][c][-1]}", file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    print(f"| clients | glassbox tok/s | llama.cpp tok/s | ratio | glassbox TTFT s | llama.cpp TTFT s |")
    print("|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        if len(kinds) < 2:
            print(f"| {c} | {med(raw[kinds[0]][c], 'tok_s'):.1f} | | | {med(raw[kinds[0]][c], 'ttft_s'):.2f} | |")
            continue
        g, l = raw["glassbox"][c], raw["llama.cpp"][c]
        print(f"| {c} | {med(g, 'tok_s'):.1f} | {med(l, 'tok_s'):.1f} | {med(g, 'tok_s') / med(l, 'tok_s'):.2f}x "
              f"| {med(g, 'ttft_s'):.2f} | {med(l, 'ttft_s'):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
