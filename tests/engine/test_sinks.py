"""Attention sinks' two exact forms (engine/layers/sinks.py) against the plain formula: a softmax over
[scores, sink] whose sink column carries no value, under GQA, masks and head widths off a multiple of 8."""
import pytest
import torch

from engine.layers.sinks import _decode_with_sinks, _sdpa_sink_key, softmax_with_sinks


def reference(q, k, v, mask, sinks, scale):
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(torch.cat([scores, sinks.view(1, -1, 1, 1).expand(*scores.shape[:3], 1)], -1), -1)
    return weights[..., :-1] @ v, weights[..., -1]


@pytest.mark.parametrize("d", [16, 20, 14])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_both_forms_equal_the_formula(d, T, masked):
    g = torch.Generator().manual_seed(d + T)
    B, H, K, S = 2, 6, 2, 9
    q, k, v = (torch.randn(B, n, t, d, generator=g) for n, t in ((H, T), (K, S), (K, S)))
    sinks = torch.randn(H, generator=g) * 2
    mask = None
    if masked:  # each row sees a different random half of the keys, and always its last one
        mask = torch.rand(B, 1, T, S, generator=g) > 0.5
        mask[..., -1] = True
    expected, sink_share = reference(q, k, v, mask, sinks, 0.3)
    torch.testing.assert_close(_sdpa_sink_key(q, k, v, mask, sinks, 0.3), expected, atol=1e-5, rtol=0)
    if T == 1:
        torch.testing.assert_close(_decode_with_sinks(q, k, v, mask, sinks, 0.3), expected, atol=1e-5, rtol=0)
    scores = (q @ k.repeat_interleave(3, dim=1).transpose(-1, -2)) * 0.3
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs, sink = softmax_with_sinks(scores, sinks)
    torch.testing.assert_close(sink, sink_share, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(-1) + sink, torch.ones_like(sink), atol=1e-6, rtol=0)
