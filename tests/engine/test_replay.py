"""Inspection by replay (engine/instrumentation/replay.py): attention recomputed when someone looks
equals the attention the explicit path captured while generating."""
import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.records import GenerationRequest, InstrumentOptions, PromptRecord, SamplingParams, StepRecord


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])
def test_replayed_attention_equals_the_attention_captured_while_generating(hf_checkpoint, arch):
    directory, _ = hf_checkpoint(arch)
    ckpt = load_checkpoint(directory)
    engine = Engine(Decoder.from_tensors(ckpt.config, ckpt.tensors), ckpt.tokenizer, directory, num_blocks=64)
    layer = ckpt.config.n_layers - 1
    prompt = (3, 9, 4, 3, 9, 4, 11, 5, 17, 2, 8)
    request = GenerationRequest(prompt, SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True),
                                instrument=InstrumentOptions(attention_layers=(layer,)))
    steps = [r for r in engine.stream(request) if isinstance(r, StepRecord)]
    assert len(steps) == 12
    ids = list(prompt) + [s.token_id for s in steps]
    # Step i's attention is that of the token fed to produce it: position len(prompt) - 1 + i.
    first = len(prompt) - 1
    view = engine.attention(ids, layer, (first, first + len(steps)))
    assert view.weights.shape == (ckpt.config.n_heads, len(steps), first + len(steps))
    checked = 0
    for i, step in enumerate(steps):
        for row in step.attention:
            live = np.asarray(row.weights)
            replayed = view.weights[row.head, i, :len(live)]
            np.testing.assert_allclose(replayed, live, atol=1e-5, rtol=0)
            assert not view.weights[row.head, i, len(live):].any()  # nothing after the query's own position
            assert view.kv_group[row.head] == row.kv_head
            checked += 1
    assert checked == len(steps) * ckpt.config.n_heads


def test_replay_in_chunks_equals_one_chunk(hf_checkpoint, monkeypatch):
    from engine.instrumentation import replay

    directory, _ = hf_checkpoint("llama")
    ckpt = load_checkpoint(directory)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    ids = torch.randint(0, ckpt.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    whole = replay.replay_attention(model, ids, 1, (5, 40))
    monkeypatch.setattr(replay, "REPLAY_CHUNK", 7)
    chunked = replay.replay_attention(model, ids, 1, (5, 40))
    np.testing.assert_allclose(chunked.weights, whole.weights, atol=1e-5, rtol=0)
    np.testing.assert_allclose(whole.weights.sum(-1), 1.0, atol=1e-5)


def test_replay_stops_when_cancelled(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    ckpt = load_checkpoint(directory)
    engine = Engine(Decoder.from_tensors(ckpt.config, ckpt.tensors), ckpt.tokenizer, directory, num_blocks=16)
    assert engine.attention(list(range(1, 30)), 0, (0, 29), cancelled=lambda: True) is None
    with pytest.raises(ValueError):
        engine.attention([1, 2, 3], 99, (0, 3))


def test_stream_starts_with_the_prompt_and_its_texts(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    ckpt = load_checkpoint(directory)
    engine = Engine(Decoder.from_tensors(ckpt.config, ckpt.tensors), ckpt.tokenizer, directory, num_blocks=16)
    first = next(engine.stream(GenerationRequest((3, 9, 4), SamplingParams(temperature=0, max_new_tokens=2))))
    assert isinstance(first, PromptRecord) and first.token_ids == (3, 9, 4)
    assert first.token_texts == tuple(ckpt.tokenizer.token_text(t) for t in (3, 9, 4))
