"""`python -m engine bench --count-ops`: PyTorch operator calls per decoded token, by operator.

Counted with a TorchDispatchMode: every call that reaches the dispatcher from Python (an aten op, or
one of Glassbox's own torch.ops.glassbox kernels) counts once; what a kernel calls inside it does not.
Per token = (calls while generating 1 + n tokens - calls while generating 1) / n, both after a warm-up
on the same prompt, so the prompt's cached prefix and the sampling of the first token cancel out.
Our kernels and PyTorch's (GLASSBOX_NO_KERNELS=1) run in separate processes: the choice is made at load.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

from torch.utils._python_dispatch import TorchDispatchMode


class _CountCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_per_token(model: str | None, threads: int, new_tokens: int = 8) -> dict:
    import torch

    from engine.engine import Engine
    from engine.quant import kernels
    from engine.records import GenerationDone, LoadOptions, SamplingParams

    torch.set_num_threads(threads)
    engine = Engine.load(model, LoadOptions(device="cpu"))
    prompt = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog.")

    def counted(k: int) -> collections.Counter:
        with _CountCalls() as mode:
            [x for x in engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=k, ignore_eos=True))
             if isinstance(x, GenerationDone)]
        return mode.calls

    counted(2)  # warm-up: the prompt's blocks are cached for both counted runs
    one, many = counted(1), counted(1 + new_tokens)
    per_op = {op: (many[op] - one[op]) / new_tokens for op in many if many[op] != one[op]}
    return {"kernels": kernels.isa(), "per_token": sum(per_op.values()),
            "by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}


def compare_counts(model: str | None, threads: int) -> dict:
    """Ours with our kernels and with PyTorch's, each in its own process."""
    out = {}
    for name, env in (("glassbox kernels", {}), ("PyTorch kernels", {"GLASSBOX_NO_KERNELS": "1"})):
        cmd = [sys.executable, "-m", "engine.bench.ops", json.dumps({"model": model, "threads": threads})]
        run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env))
        if run.returncode != 0:
            raise RuntimeError(f"counting {name} failed:\n{run.stderr[-2000:]}")
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def print_counts(result: dict, top: int = 12) -> None:
    for name, r in result.items():
        print(f"{name} ({r['kernels']}): {r['per_token']:.0f} operator calls per decoded token")
        for op, n in list(r["by_op"].items())[:top]:
            print(f"  {n:7.1f}  {op}")


if __name__ == "__main__":  # a worker: python -m engine.bench.ops '{"model": ..., "threads": ...}'
    job = json.loads(sys.argv[1])
    print(json.dumps(count_per_token(job["model"], job["threads"])))
