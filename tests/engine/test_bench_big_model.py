"""The ~1B benchmark model's writer (engine/bench/big_model.py), at tiny shapes with the real copied
tokenizer: Glassbox and llama.cpp both load what it writes, the tensor types are as intended, and the
cache reuses a complete file while never reading a half-written one. Nothing here is timed."""
import importlib.util
import os

import pytest

from engine.bench.big_model import Shapes, big_model_path

TINY = Shapes(dim=64, hidden_dim=160, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, context=256)
PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return big_model_path(TINY, folder=tmp_path_factory.mktemp("cache"), progress=None)


def test_tensor_types_and_shapes(tiny_file):
    from gguf import GGUFReader

    reader = GGUFReader(str(tiny_file))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["output.weight"] == "Q8_0"  # the untied LM head
    assert kinds["token_embd.weight"] == "Q4_0"
    assert {k for n, k in kinds.items() if n.startswith("blk.") and not n.endswith("norm.weight")} == {"Q4_0"}
    assert {k for n, k in kinds.items() if n.endswith("norm.weight")} == {"F32"}
    assert len(kinds) == 3 + 9 * TINY.n_layers
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # GGUF order: columns first
    assert shapes["blk.1.attn_k.weight"] == (TINY.dim, TINY.n_kv_heads * TINY.head_dim)
    assert shapes["blk.0.ffn_down.weight"] == (TINY.hidden_dim, TINY.dim)
    assert shapes["output.weight"] == (TINY.dim, 49152)  # the default model's vocabulary
    assert reader.fields["general.file_type"].contents() == 2  # llama.cpp's MOSTLY_Q4_0: never requantized


def test_glassbox_loads_it_and_decodes(tiny_file):
    from engine.engine import Engine
    from engine.records import GenerationDone, LoadOptions, SamplingParams

    engine = Engine.load(str(tiny_file), LoadOptions(device="cpu"))
    assert engine.model.config.n_kv_heads == TINY.n_kv_heads and engine.model.config.vocab_size == 49152
    ids = engine.tokenizer.encode(PROMPT)
    assert len(ids) > 5  # the copied tokenizer works
    done = [x for x in engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True))
            if isinstance(x, GenerationDone)][0]
    assert len(done.token_ids) == 6 and all(0 <= t < 49152 for t in done.token_ids)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is optional")
def test_llama_cpp_loads_it_and_evaluates(tiny_file):
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith

    from engine.loaders import load_checkpoint

    llm = Llama(model_path=str(tiny_file), n_ctx=128, n_threads=1, verbose=False)
    ids = load_checkpoint(tiny_file, keep_packed=True).tokenizer.encode(PROMPT)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids  # one tokenizer for both
    llm.eval(ids)
    logits = np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    assert llm.n_vocab() == 49152 and np.isfinite(logits).all() and logits.std() > 0


def test_cache_reuses_a_complete_file(tiny_file):
    before = os.stat(tiny_file).st_mtime_ns
    assert big_model_path(TINY, folder=tiny_file.parent, progress=None) == tiny_file
    assert os.stat(tiny_file).st_mtime_ns == before  # not written again


def test_cache_never_reads_a_half_written_file(tmp_path):
    final = tmp_path / TINY.file_name(seed=1)
    dead = tmp_path / (final.name + ".partial-999999999")  # no such process: its writer died mid-write
    dead.write_bytes(b"GGUF half a header")
    path = big_model_path(TINY, folder=tmp_path, seed=1, progress=None)
    assert path == final and path.stat().st_size > 1_000_000
    assert not dead.exists()  # a dead writer's leftover is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # and ours was renamed, not left behind


def test_compare_runs_a_q4_0_file_as_it_is(tiny_file):
    from engine.bench.compare import _is_q4_0
    from engine.loaders import default_model_path

    assert _is_q4_0(str(tiny_file))
    assert not _is_q4_0(str(default_model_path()))  # the shipped Q4_1 file is requantized for that row
