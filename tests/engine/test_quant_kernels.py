"""Glassbox's C++ quantized kernels (engine/quant/csrc, engine/quant/kernels.py) against the matmul on
their dequantized weights, on every SIMD path this CPU has, 1 and 2 threads, shapes that are not whole
blocks or vectors; the weights our int4/int8/GGUF layouts turn into; and the fallback without them.

The tolerance is derived, not tuned: the kernels round each 32-block of activations to 8 bits,
xq = round(x / dx) with dx = max|x| / 127, so |x - dx xq| <= dx / 2 per value, and the integer part of
a block's product, d * sum(code * x), is off by at most |d| * sum(|code|) * dx / 2. (The q4 offset
m * sum(x) uses the float sum: no rounding there.) Beyond that only fp32 summation order differs.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.quant import Int4Weight, Int8Weight, PackedGGUF, kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"kernels not built: {kernels.load_error()}")

SHAPES = [(1, 32), (7, 33), (96, 100), (13, 257), (33, 70), (64, 1536)]  # N, K: K not /32 or /64, N not /4 or /16
ROWS = [1, 3, 17, 70]  # 70: tiles of 4 (or 2) rows and chunks of 64
ISAS = kernels.supported_isas() if kernels.available() else []


@pytest.fixture
def each_isa():
    """Runs the test body once per SIMD path (the scalar one included), restoring the CPU's best."""
    def run(body):
        try:
            for isa in ISAS:
                kernels.use_isa(isa)
                body(isa)
        finally:
            kernels.use_isa("best")
    return run


def _q4(N, K, seed) -> kernels.BlockQ4Weight:
    g = torch.Generator().manual_seed(seed)
    G = -(-K // 32)
    codes = torch.randint(0, 16, (N, G * 32), generator=g, dtype=torch.uint8)
    d = torch.rand(N, G, generator=g) * 0.1 - 0.03  # negative scales too, as a GGUF may hold
    return kernels.BlockQ4Weight.from_codes(codes, d, torch.randn(N, G, generator=g) * 0.2, 32, K)


def _q4_0(N, K, seed) -> kernels.BlockQ4Weight:
    """GGUF Q4_0: m = -8 d, which the layout stores without m (the kernel subtracts 8 sum(xq))."""
    g = torch.Generator().manual_seed(seed)
    G = -(-K // 32)
    codes = torch.randint(0, 16, (N, G * 32), generator=g, dtype=torch.uint8)
    d = (torch.rand(N, G, generator=g) * 0.1 - 0.03).half().float()
    weight = kernels.BlockQ4Weight.from_codes(codes, d, -8 * d, 32, K)
    assert weight.format == kernels.Q4_0
    return weight


def _q8(N, K, seed) -> kernels.BlockQ8Weight:
    g = torch.Generator().manual_seed(seed)
    G = -(-K // 32)
    codes = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)  # -128 too: Q8_0 files may hold it
    return kernels.BlockQ8Weight.from_codes(codes, torch.rand(N, G, generator=g) * 0.01, K)


_WEIGHTS = {"q4": _q4, "q4_0": _q4_0, "q8": lambda N, K, seed: _q8(N, K, seed)}


def rounding_bound(weight, x: torch.Tensor, sigmas: float | None = None) -> torch.Tensor:
    """[M, N]: sum over k of |d code| * dx_block(k) / 2 (the worst case), plus fp32 summation slack.
    sigmas: instead, that many standard deviations of the sum of independent rounding errors, each
    uniform on [-dx/2, dx/2] (variance dx^2 / 12): a much tighter check that a wrong scale would fail."""
    K = weight.in_features
    if isinstance(weight, kernels.BlockQ4Weight):
        codes = weight.codes().float()
        d = weight.dm[..., 0].float()
        if weight.format == kernels.Q4_0:  # w = d (code - 8), and the 8 sum(xq) is rounded too
            codes = codes - 8
    else:
        codes = weight.qs.flatten(1).float()
        d = weight.d.float()
    integer_part = (codes * d.repeat_interleave(32, dim=1)).abs()[:, :K]  # [N, K]
    blocks = F.pad(x.float(), (0, integer_part.shape[1] - K + (-K % 32))).view(x.shape[0], -1, 32)
    dx = (blocks.abs().amax(dim=-1) / 127).repeat_interleave(32, dim=1)[:, :K]  # [M, K]
    slack = 1e-5 * (x.abs() @ weight.dequantize().abs().T) + 1e-6
    if sigmas is not None:
        return sigmas * ((dx ** 2 / 12) @ (integer_part ** 2).T).sqrt() + slack
    return (dx / 2) @ integer_part.T * (1 + 1e-4) + slack


@pytest.mark.parametrize("kind", ["q4", "q4_0", "q8"])
@pytest.mark.parametrize("N,K", SHAPES)
def test_kernel_equals_dequantized_matmul_within_activation_rounding(kind, N, K, each_isa):
    weight = _WEIGHTS[kind](N, K, seed=N * K)
    reference_w = weight.dequantize()
    for M in ROWS:
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3
        bound, likely = rounding_bound(weight, x), rounding_bound(weight, x, sigmas=6)
        ref = x @ reference_w.T

        def check(isa):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                y = weight.matmul(x)
                assert y.shape == (M, N) and y.dtype == torch.float32
                excess = ((y - ref).abs() - bound).max().item()
                assert excess <= 0, f"{isa}, {threads} threads, {M} rows: {excess} beyond the bound"
                assert ((y - ref).abs() <= likely).all(), f"{isa}: beyond 6 sigma of the rounding errors"
            torch.set_num_threads(1)
        each_isa(check)


@pytest.mark.parametrize("kind", ["q4", "q4_0", "q8"])
def test_simd_paths_compute_the_scalar_paths_integers(kind, each_isa):
    """The same quantized activations and integer dot products on every path: results differ only by
    fp32 summation order. 1 and 2 threads split rows, never a row's sum: bit-identical."""
    weight = _WEIGHTS[kind](37, 1000, seed=5)
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(1))
    kernels.use_isa("scalar")
    scalar = weight.matmul(x)
    results = {}

    def run(isa):
        torch.set_num_threads(1)
        one = weight.matmul(x)
        torch.set_num_threads(2)
        assert torch.equal(weight.matmul(x), one), isa
        torch.set_num_threads(1)
        results[isa] = one
    each_isa(run)
    for isa, y in results.items():
        torch.testing.assert_close(y, scalar, rtol=1e-5, atol=1e-4, msg=isa)


@pytest.mark.parametrize("kind", ["q4", "q4_0", "q8"])
def test_a_row_gives_the_same_numbers_alone_or_among_many(kind, each_isa):
    """Prefill, a verify window and a batch take the same kernel as one decoded token, tiled over many
    rows: each row's arithmetic does not depend on the rows beside it, so a token's logits are the same
    bit for bit whether it is decoded alone or inside a 70-row chunk (what keeps speculative decoding and
    the prefix cache exact). The packed values equal the Python reference of the block layout."""
    weight = _WEIGHTS[kind](45, 100, seed=2)
    codes = weight.codes().float() if kind != "q8" else weight.qs.flatten(1).float()
    scales = weight.dm.float() if kind != "q8" else weight.d.float()[..., None]
    expected = codes.view(45, -1, 32) * scales[..., :1] + (scales[..., 1:] if kind != "q8" else 0)
    assert torch.equal(weight.dequantize(), expected.flatten(1)[:, :100])
    x = torch.randn(70, 100)

    def check(isa):
        many = weight.matmul(x)
        for i in (0, 3, 64, 69):
            assert torch.equal(weight.matmul(x[i:i + 1]), many[i:i + 1]), (isa, i)
    each_isa(check)


def test_leading_dims_dtypes_and_an_unsupported_path():
    weight = _q4(20, 64, seed=1)
    x = torch.randn(2, 3, 64)
    y = weight.matmul(x)
    assert y.shape == (2, 3, 20)
    torch.testing.assert_close(y.reshape(6, 20), weight.matmul(x.reshape(6, 64)), rtol=0, atol=0)
    half = weight.matmul(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert weight.matmul(torch.randn(0, 64)).shape == (0, 20)
    with pytest.raises(RuntimeError, match="features"):
        weight.matmul(torch.randn(1, 100))
    with pytest.raises(RuntimeError, match="not supported"):
        kernels.use_isa("sse1")


# ---- the engine's weights become kernel weights --------------------------------------------------

@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_weights_move_into_the_kernel_layout(group):
    torch.manual_seed(group)
    w = torch.randn(40, 200)
    ours = Int4Weight.quantize(w, group, keep_rows=True)
    exact = ours.dequantize()
    moved = ours.to("cpu", torch.bfloat16)
    assert isinstance(moved, kernels.BlockQ4Weight) and moved.shape == (40, 200)
    # the same codes; scales rounded to fp16 (relative 2^-11 at most, on d and on m = zero - 8 d)
    step = (exact.abs().max() / 1000).item()
    assert (moved.dequantize() - exact).abs().max().item() <= step
    ids = torch.tensor([[0, 39], [7, 7]])
    assert torch.equal(moved.rows(ids), moved.dequantize()[ids])
    x = torch.randn(3, 200)
    assert ((moved.matmul(x) - x @ moved.dequantize().T).abs() <= rounding_bound(moved, x)).all()


def test_int8_weights_move_into_the_kernel_layout():
    torch.manual_seed(0)
    w = torch.randn(24, 70)
    moved = Int8Weight.quantize(w).to("cpu", torch.bfloat16)
    assert isinstance(moved, kernels.BlockQ8Weight) and moved.shape == (24, 70)
    assert (moved.dequantize() - Int8Weight.quantize(w).dequantize()).abs().max() <= w.abs().max() / 1000
    x = torch.randn(2, 70)
    assert ((moved.matmul(x) - x @ moved.dequantize().T).abs() <= rounding_bound(moved, x)).all()


def _gguf_blocks(kind: str, rows: int, blocks: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(rows, blocks, {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]), dtype=np.uint8)
    scales = rng.normal(0, 0.05, size=(rows, blocks, 2 if kind == "Q4_1" else 1)).astype(np.float16)
    raw[..., : scales.shape[-1] * 2] = scales.view(np.uint8).reshape(rows, blocks, -1)
    return raw


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_keep_their_values_in_the_kernel_layout(kind):
    blocks = PackedGGUF(kind, (21, 7 * 32), _gguf_blocks(kind, 21, 7))
    moved = blocks.to_weight(keep_rows=True).to("cpu", torch.bfloat16)
    assert isinstance(moved, kernels.BlockQ8Weight if kind == "Q8_0" else kernels.BlockQ4Weight)
    assert torch.equal(moved.dequantize(), blocks.dequantize())  # codes and fp16 scales kept bit for bit
    x = torch.randn(4, 7 * 32)
    assert ((moved.matmul(x) - x @ blocks.dequantize().T).abs() <= rounding_bound(moved, x)).all()


def test_exact_mode_keeps_pytorchs_kernels():
    """quant_exact computes in float32: no activation rounding, so not our kernels."""
    assert isinstance(Int4Weight.quantize(torch.randn(16, 64), 32).to("cpu", torch.float32), Int4Weight)
    assert isinstance(Int8Weight.quantize(torch.randn(16, 64)).to("cpu", torch.float32), Int8Weight)


# ---- without the kernels: today's PyTorch path, the same tokens ----------------------------------

_GREEDY = """
import sys, torch
from engine.engine import Engine
from engine.records import GenerationDone, LoadOptions, SamplingParams
torch.set_num_threads(1)
engine = Engine.load(sys.argv[1], LoadOptions(device="cpu", dtype="float32", quant=sys.argv[2]))
kinds = sorted({type(w).__name__ for m in engine.model.modules() for w in getattr(m, "quant_weights", lambda: [])()})
done = [x for x in engine.generate([1, 2, 3, 4], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True))
        if isinstance(x, GenerationDone)][0]
print(",".join(kinds), list(done.token_ids))
"""


@pytest.mark.parametrize("mode", ["int4-g32", "int8"])
def test_without_kernels_the_engine_says_so_once_and_gives_the_same_tokens(hf_checkpoint, mode):
    path, _ = hf_checkpoint("llama")
    env = dict(os.environ, GLASSBOX_NO_KERNELS="1")
    out = subprocess.run([sys.executable, "-c", _GREEDY, str(path), mode], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("glassbox kernels not used: GLASSBOX_NO_KERNELS is set") == 1
    kinds, tokens = out.stdout.strip().split(" ", 1)
    assert "Block" not in kinds

    from engine.engine import Engine
    from engine.records import GenerationDone, LoadOptions, SamplingParams

    with kernels.disabled():  # in this process the extension is loaded: the fallback by hand
        engine = Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant=mode))
    done = [x for x in engine.generate([1, 2, 3, 4], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True))
            if isinstance(x, GenerationDone)][0]
    assert tokens == str(list(done.token_ids))
    fast = Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant=mode))
    kinds = {type(w).__name__ for m in fast.model.modules() for w in getattr(m, "quant_weights", lambda: [])()}
    assert kinds <= {"BlockQ4Weight", "BlockQ8Weight"}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_projections_with_kernels_are_the_parts_bit_for_bit(hf_checkpoint, arch):
    """Every output row is its own weight row's dot product with the same quantized activations: stacking
    q/k/v or gate/up changes no number (where no op upstream runs differently on the wider tensor)."""
    from engine.loaders import load_checkpoint
    from engine.model import Decoder
    from engine.quant import fuse_projections, quantize_model

    path, _ = hf_checkpoint(arch)
    ckpt = load_checkpoint(path)
    plain = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), "int4-g32")
    fused = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), "int4-g32")
    assert fuse_projections(fused) == 2 * ckpt.config.n_layers
    assert isinstance(fused.layers[0].attn.wqkv.qweight, kernels.BlockQ4Weight)
    tokens = torch.randint(0, ckpt.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(_float_logits(plain, tokens), _float_logits(fused, tokens))


def _float_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """A prefill and one decode step (1 and many activation rows), concatenated."""
    from engine.kv_cache import ContiguousKVCache

    cache = ContiguousKVCache(model.config, tokens.shape[1] + 1, batch=tokens.shape[0])
    prefill = model(tokens, cache.view(0, tokens.shape[1]))
    return torch.cat([prefill, model(tokens[:, -1:], cache.view(tokens.shape[1], 1))], dim=1)
