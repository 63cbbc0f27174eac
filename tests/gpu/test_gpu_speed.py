"""The default model on a CUDA GPU: bf16 greedy against HF transformers on the same GPU, CUDA-graph decode
against eager decode, and tokens/s recorded (printed and, with GLASSBOX_GPU_RESULTS=path, written as JSON
for docs/benchmarks.md). Speed is recorded, never asserted. Skipped without CUDA.

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_speed.py
"""
import json
import os
import time

import pytest
import torch

from engine.engine import Engine
from engine.records import LoadOptions
from engine.records import GenerationDone, SamplingParams
from engine.runtime.static_decode import StaticDecoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPTS = ["What is the capital of France?", "Write a Python function that returns the square of a number.",
           "Give me three tips for staying healthy."]
NEAR_TIE = 0.25  # bf16 logits of two engines may swap tokens whose logits are closer than this
RESULTS: dict = {}


@pytest.fixture(scope="module")
def engine(default_gguf):
    return Engine.load(default_gguf, LoadOptions(device="cuda", dtype="bfloat16"))


@pytest.fixture(scope="module")
def hf_bf16(default_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(default_gguf), dtype=torch.bfloat16,
                                                gguf_file=os.path.basename(default_gguf)).cuda().eval()


def _greedy(engine, prompt, n, graphs: bool):
    runner = engine._runner
    saved, runner.static = runner.static, (runner.static if graphs else None)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        return [x for x in engine.generate(prompt, params) if isinstance(x, GenerationDone)][0]
    finally:
        runner.static = saved


def _agree_until_near_tie(hf, prompt, ours, ref) -> int:
    """How many leading tokens must agree: up to the first step where HF's top-2 gap is a near tie."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + ref], device="cuda")).logits[0, len(prompt) - 1:-1].float()
    top2 = logits.topk(2, dim=-1).values
    gaps = (top2[:, 0] - top2[:, 1]).tolist()
    return next((i for i, g in enumerate(gaps) if g < NEAR_TIE), len(ref))


@pytest.mark.parametrize("question", PROMPTS)
def test_bf16_greedy_matches_transformers(engine, hf_bf16, question):
    prompt = engine.chat_prompt_ids([{"role": "user", "content": question}])
    ours = list(_greedy(engine, prompt, 32, graphs=True).token_ids)
    with torch.no_grad():
        ref = hf_bf16.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=32, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    n = _agree_until_near_tie(hf_bf16, prompt, ours, ref)
    assert n >= 4, "the reference has a near tie in its first tokens: pick another prompt"
    assert ours[:n] == ref[:n]


@pytest.mark.parametrize("question", PROMPTS)
def test_graph_decode_equals_eager_decode(engine, question):
    prompt = engine.chat_prompt_ids([{"role": "user", "content": question}])
    graphed = _greedy(engine, prompt, 80, graphs=True)  # crosses the 64 -> 128 bucket boundary
    eager = _greedy(engine, prompt, 80, graphs=False)
    assert graphed.token_ids == eager.token_ids


def test_graph_replay_equals_the_same_step_run_eagerly(engine):
    """Bit for bit: replaying a captured graph computes exactly the recorded kernels."""
    runner = engine._runner
    prompt = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[0]}])
    from engine.runtime.block_manager import BlockTable

    table = BlockTable()
    runner._forward([table], [prompt], None)
    runner.blocks.append(table, [prompt[-1]])
    slot_args = (prompt[-1], table.num_tokens - 1,
                 table.block_ids[-1] * runner.blocks.block_size + (table.num_tokens - 1) % runner.blocks.block_size,
                 list(table.block_ids))
    graphed = StaticDecoder(engine.model, runner.pool, use_graphs=True).decode(*slot_args).clone()
    eager = StaticDecoder(engine.model, runner.pool, use_graphs=False).decode(*slot_args)
    runner.blocks.release(table)
    assert torch.equal(graphed, eager)


def test_record_tokens_per_second(engine, hf_bf16):
    prompt = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[1]}])
    n = 256
    rows = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "new_tokens": n}
    for name, graphs in (("glassbox bf16, CUDA graphs", True), ("glassbox bf16, eager", False)):
        _greedy(engine, prompt, 16, graphs)  # capture / warm up
        rows[name] = max(_greedy(engine, prompt, n, graphs).decode_tokens_per_s for _ in range(3))
    ids = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        hf_bf16.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        best = 0.0
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            hf_bf16.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            hf_bf16.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            best = max(best, (n - 1) / (time.perf_counter() - t1 - (t1 - t0)))
        rows["hf transformers bf16 generate"] = best
        long = torch.randint(0, engine.config.vocab_size, (1, 4096), device="cuda")
        model = engine.model
        from engine.kv_cache import ContiguousKVCache

        for _ in range(2):
            cache = ContiguousKVCache(engine.config, 4096, device="cuda", dtype=torch.bfloat16)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(long, cache.view(0, 4096), last_only=True)
            torch.cuda.synchronize()
            rows["glassbox prefill 4096 tok/s"] = 4096 / (time.perf_counter() - t0)
    rows["graphs / hf decode"] = rows["glassbox bf16, CUDA graphs"] / rows["hf transformers bf16 generate"]
    print(json.dumps(rows, indent=2))
    if os.environ.get("GLASSBOX_GPU_RESULTS"):
        with open(os.environ["GLASSBOX_GPU_RESULTS"], "w") as f:
            json.dump(rows, f, indent=2)
