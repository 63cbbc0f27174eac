"""The window against the engine, side by side (docs/benchmarks.md, "The window against the engine").

    flock /tmp/glassbox-bench.lock .venv/bin/python scripts/bench_window.py --runs 5 --new-tokens 128

For each prompt length it alternates, run by run, the real window offscreen on the default panels
(`python -m app --smoke --prompt-file FILE --max-new-tokens N`) and the engine alone
(`python -m engine generate --prompt-file FILE --chat --ignore-eos --temperature 0 --max-new-tokens N`),
both at their default settings (threads included), greedy, EOS ignored, the same chat-formatted prompt.
Prompts are the shipped prose cut to about the asked number of tokens of context. Prints medians of
decode tok/s, their ratio, and the window's RSS growth per generated token (first to last token).

`--worker` adds a third variant to each run: the window's EngineWorker on its QThread with no window
(`--worker-run FILE N`, one chat turn, greedy, EOS ignored), which tells the worker thread's own cost from
the drawing's.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_prompts(contexts: list[int]) -> dict[int, str]:
    """For each context length, the longest start of the shipped prose whose chat-formatted prompt has
    at most that many tokens (the default model's template adds ~30 of its own)."""
    from engine.engine import Engine
    from engine.instrumentation.quality import SHIPPED_TEXT
    from engine.records import LoadOptions

    engine = Engine.load(None, LoadOptions(threads=1))
    words = SHIPPED_TEXT.read_text(encoding="utf-8").split()
    prompts = {}
    for context in contexts:
        def size(n: int) -> int:
            return len(engine.chat_prompt_ids([{"role": "user", "content": " ".join(words[:n])}]))

        low, high = 1, len(words)
        while low < high:  # the most words that fit
            mid = (low + high + 1) // 2
            low, high = (mid, high) if size(mid) <= context else (low, mid - 1)
        prompts[context] = " ".join(words[:low])
    return prompts


def worker_run(prompt_file: str, tokens: int) -> int:
    """The window's worker alone: one chat turn through EngineWorker on its QThread, no window; prints the
    decode tok/s as the smoke does (the engine's RequestDone)."""
    from PySide6.QtCore import QCoreApplication, QThread

    from app.engine_worker import EngineWorker
    from app.turn import Turn
    from engine.records import LoadOptions, SamplingParams

    app = QCoreApplication([])
    worker, thread = EngineWorker(), QThread()
    worker.moveToThread(thread)
    thread.start()
    text = Path(prompt_file).read_text(encoding="utf-8")
    params = SamplingParams(temperature=0, max_new_tokens=tokens, ignore_eos=True)

    def finished(done):
        n = len(done.results[0].token_ids)
        print(f"decode_tok_s={(n - 1) / (done.decode_ms / 1000):.2f}", flush=True)
        app.quit()

    worker.loaded.connect(lambda facts: worker.request_generate(Turn(params, messages=({"role": "user",
                                                                                        "content": text},))))
    worker.finished.connect(finished)
    worker.load_failed.connect(lambda message: (print(message), app.exit(1)))
    worker.request_load(None, LoadOptions())
    code = app.exec()
    thread.quit()
    thread.wait()
    return code


def main() -> int:
    if sys.argv[1:2] == ["--worker-run"]:
        return worker_run(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--contexts", type=int, nargs="+", default=[32, 2000],
                        help="tokens of context (prompt, chat-formatted) at which to measure")
    parser.add_argument("--worker", action="store_true", help="also the worker thread without a window")
    args = parser.parse_args()
    prompts = make_prompts(args.contexts)
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for context, text in prompts.items():
            path = Path(tmp) / f"prompt_{context}.txt"
            path.write_text(text, encoding="utf-8")
            window, engine, growth, prompt_tokens, alone = [], [], [], None, []
            for run in range(args.runs):
                out = subprocess.run([py, "-m", "app", "--smoke", "--prompt-file", str(path), "--max-new-tokens",
                                      str(args.new_tokens)], capture_output=True, text=True, cwd=ROOT)
                summary = dict(re.findall(r"(\w+)=(\S+)", out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""))
                if out.returncode != 0 or "decode_tok_s" not in summary:
                    print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                    return 1
                window.append(float(summary["decode_tok_s"]))
                prompt_tokens = int(summary["prompt_tokens"])
                growth.append((float(summary["rss_end_mb"]) - float(summary["rss_start_mb"])) * 1024
                              / (args.new_tokens - 1))
                out = subprocess.run([py, "-m", "engine", "generate", "--prompt-file", str(path), "--chat",
                                      "--ignore-eos", "--temperature", "0", "--max-new-tokens", str(args.new_tokens)],
                                     capture_output=True, text=True, cwd=ROOT)
                match = re.search(r"decode ([\d.]+) tok/s", out.stdout + out.stderr)
                if out.returncode != 0 or not match:
                    print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                    return 1
                engine.append(float(match.group(1)))
                if args.worker:
                    out = subprocess.run([py, __file__, "--worker-run", str(path), str(args.new_tokens)],
                                         capture_output=True, text=True, cwd=ROOT)
                    match = re.search(r"decode_tok_s=([\d.]+)", out.stdout)
                    if out.returncode != 0 or not match:
                        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                        return 1
                    alone.append(float(match.group(1)))
                print(f"context {prompt_tokens} run {run + 1}: window {window[-1]:.1f} engine {engine[-1]:.1f} "
                      + (f"worker alone {alone[-1]:.1f} " if alone else "")
                      + f"tok/s, RSS {growth[-1]:+.1f} KB/token", flush=True)
            if alone:
                print(f"context {prompt_tokens}: worker alone median {statistics.median(alone):.1f} tok/s, "
                      f"median of its ratios to the engine {statistics.median(a / b for a, b in zip(alone, engine)):.2f}")
            w, e = statistics.median(window), statistics.median(engine)
            paired = statistics.median(a / b for a, b in zip(window, engine))  # each run beside its neighbour
            rows.append((prompt_tokens, w, e, w / e, paired, statistics.median(growth)))
    print("\n| context (tokens) | window decode tok/s | engine decode tok/s | ratio of medians | median of run pairs' ratios "
          "| window RSS growth KB/token |")
    print("|---|---|---|---|---|---|")
    for prompt_tokens, w, e, ratio, paired, g in rows:
        print(f"| {prompt_tokens} | {w:.1f} | {e:.1f} | {ratio:.2f} | {paired:.2f} | {g:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
