"""Quantized weights on CUDA (skipped without a GPU): the int4 tensor-core kernel and the int8
path against matmuls with the dequantized weights, and a quantized model against its float self."""
from __future__ import annotations

import pytest
import torch

from engine.quant import Int4Weight, Int8Weight

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("N,K", [(576, 576), (1536, 576), (576, 1536), (100, 96), (49152, 576)])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_cuda_kernel_matches_dequantized_matmul(N, K, group):
    torch.manual_seed(N + K + group)
    w = torch.randn(N, K)
    q = Int4Weight.quantize(w, group).to("cuda", torch.bfloat16)
    x = torch.randn(3, K, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ q.dequantize().float().t()
    got = q.matmul(x).float()
    assert got.shape == (3, N)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 2e-2
    if torch.cuda.get_device_capability() >= (8, 0):
        assert q._packed is not None, "sm80+ should use the tensor-core kernel, not the fallback"


def test_int8_cuda_matches_dequantized_matmul():
    torch.manual_seed(0)
    q = Int8Weight.quantize(torch.randn(1536, 576)).to("cuda", torch.bfloat16)
    x = torch.randn(4, 576, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ q.dequantize().float().t()
    assert ((q.matmul(x).float() - ref).abs().max() / ref.abs().max()).item() < 2e-2


@pytest.mark.parametrize("mode", ["int8", "int4-g32"])
def test_quantized_default_model_greedy_on_cuda(default_gguf, mode):
    """On a GPU the GGUF is dequantized, then re-quantized by mode; short greedy runs stay sensible."""
    from engine.engine import Engine
    from engine.records import LoadOptions
    from engine.records import GenerationDone, SamplingParams

    engine = Engine.load(default_gguf, LoadOptions(device="cuda", dtype="bfloat16", quant=mode))
    assert engine.model.weight_bytes().get(mode.split("-")[0], 0) > 0
    prompt = engine.chat_prompt_ids([{"role": "user", "content": "What is the capital of France?"}])
    done = [x for x in engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=16))
            if isinstance(x, GenerationDone)][0]
    assert "Paris" in engine.tokenizer.decode(done.token_ids)
