"""Speed of a SmolLM2-135M-shaped model on a CUDA GPU, per dtype (prints one JSON object).

The lent GPU machine cannot receive the 94 MB default GGUF (its upload limit is 64 MiB), so this
builds the same architecture with random weights: decode and prefill speed do not depend on the
weight values. Correctness on CUDA is checked separately by the parity tests
(GLASSBOX_TEST_DEVICE=cuda pytest tests/engine/test_parity_hf.py tests/engine/test_rope.py).
"""
import json
import tempfile
import time
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.loaders.validate import expected_shapes
from engine.model import Decoder
from engine.records import GenerationDone, SamplingParams
from engine.text.tokenizer import Tokenizer

SMOLLM2_135M = ModelConfig(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                           head_dim=64, hidden_dim=1536, norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192,
                           tie_embeddings=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(device: str, dtype: torch.dtype) -> Engine:
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(s, generator=g) * 0.05 for n, s in expected_shapes(SMOLLM2_135M).items()}
    model = Decoder.from_tensors(SMOLLM2_135M, tensors, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        from tests.tiny_models import write_tiny_tokenizer

        write_tiny_tokenizer(Path(d), SMOLLM2_135M.vocab_size)
        tokenizer = Tokenizer.from_hf_dir(d)
    return Engine(model, tokenizer, Path("random-smollm2-135m"))


def run(device: str, dtype: torch.dtype, new_tokens: int = 256) -> dict:
    engine = build(device, dtype)
    prompt = list(range(100, 132))
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    rates = []
    for _ in range(4):  # the first run warms up kernels and allocator
        done = [x for x in engine.generate(prompt, params) if isinstance(x, GenerationDone)][0]
        rates.append(done.decode_tokens_per_s)
    out = {"device": device, "dtype": str(dtype).removeprefix("torch."),
           "decode_tok_s_median_of_3": round(sorted(rates[1:])[1], 1)}
    for n in (512, 4096):
        tokens = torch.randint(0, 49152, (1, n), device=device)
        times = []
        for _ in range(4):
            cache = ContiguousKVCache(SMOLLM2_135M, n, device=device, dtype=dtype)
            sync(device)
            t0 = time.perf_counter()
            engine.model(tokens, cache.view(0, n), last_only=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        out[f"prefill_{n}_tok_s"] = round(n / sorted(times[1:])[1])
    return out


if __name__ == "__main__":
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        results["runs"].append(run("cuda", dtype))
    print(json.dumps(results, indent=1))
