"""Fuzzing the loaders (issue 10): every input ends in a ModelFormatError or a successful load, never
another exception, a hang, or memory far beyond the file's size.

Property-based with hypothesis, on small real files (a tiny GGUF of each tokenizer kind, a tiny HF
directory, a tokenizer.json, a sentencepiece model) that are mutated byte-wise, and on GGUF headers
rebuilt from randomised metadata and tensor descriptions (wrong types, lying counts, huge shapes).
`GLASSBOX_FUZZ_EXAMPLES` sets the inputs per loader (CI default below; docs/reliability.md records the
longer run). Inputs that once crashed a loader live in tests/engine/fuzz_corpus/ and run every time.
"""
from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from engine.errors import ModelFormatError
from engine.loaders import load_checkpoint
from engine.loaders.gguf_config import build_config
from engine.loaders.gguf_file import _open
from engine.loaders.gguf_header import read_header
from engine.text.tokenizer import Tokenizer
from tests.engine.test_gguf_loader import write_tiny

EXAMPLES = int(os.environ.get("GLASSBOX_FUZZ_EXAMPLES", "600"))
HANG_S = 10.0  # far above any load here (milliseconds): only a hang gets near it
CORPUS = Path(__file__).parent / "fuzz_corpus"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
PROBE = "hello world </s> the quick 😀 fox <|im_end|>"


def must_load_or_refuse(load) -> None:
    """The oracle: a load, or the documented error; anything else (or a near-hang) fails the test."""
    start = time.perf_counter()
    try:
        checkpoint = load()
        tokenizer = getattr(checkpoint, "tokenizer", checkpoint)
        if isinstance(tokenizer, Tokenizer):  # the loaded vocabulary must also work
            ids = tokenizer.encode(PROBE, add_special_tokens=True)
            tokenizer.decode(ids + list(range(tokenizer.vocab_size + 2)))
    except ModelFormatError:
        pass
    assert time.perf_counter() - start < HANG_S


# -- seeds ---------------------------------------------------------------------------------------------------------
def gguf_seeds(folder: Path) -> list[bytes]:
    """Three tiny GGUFs (~7-35 kB): float and quantized weights, byte-level and sentencepiece-style vocabularies."""
    seeds = []
    for qtype, kind in (("F32", "gpt2"), ("Q4_1", "llama"), ("Q8_0", "gpt2")):
        path = folder / f"seed-{qtype}.gguf"
        kv = {"tokenizer.ggml.model": kind, "tokenizer.ggml.token_type": [1] * 31 + [3],
              "tokenizer.ggml.eos_token_id": 31, "tokenizer.ggml.bos_token_id": 0,
              "tokenizer.chat_template": "{{ messages[0]['content'] }}"}
        if kind == "llama":
            kv["tokenizer.ggml.scores"] = [float(-i) for i in range(32)]
        write_tiny(path, qtype=qtype, dim=32, hidden=32, vocab=32, n_layers=1, kv=kv)
        seeds.append(path.read_bytes())
    return seeds


def hf_seed(folder: Path) -> dict[str, bytes]:
    """A tiny llama directory as transformers writes it (written directly: no transformers import here)."""
    d, heads, kv_heads, hidden, vocab = 16, 2, 1, 16, 32
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d),
              "model.layers.0.input_layernorm.weight": (d,), "model.layers.0.post_attention_layernorm.weight": (d,),
              "model.layers.0.self_attn.q_proj.weight": (d, d), "model.layers.0.self_attn.k_proj.weight": (d // 2, d),
              "model.layers.0.self_attn.v_proj.weight": (d // 2, d), "model.layers.0.self_attn.o_proj.weight": (d, d),
              "model.layers.0.mlp.gate_proj.weight": (hidden, d), "model.layers.0.mlp.up_proj.weight": (hidden, d),
              "model.layers.0.mlp.down_proj.weight": (d, hidden)}
    save_file({name: torch.randn(shape, generator=g) for name, shape in shapes.items()}, folder / "model.safetensors")
    config = {"model_type": "llama", "hidden_size": d, "intermediate_size": hidden, "num_hidden_layers": 1,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "bos_token_id": 1, "eos_token_id": 2}
    return {"model.safetensors": (folder / "model.safetensors").read_bytes(),
            "config.json": json.dumps(config).encode(),
            "tokenizer.json": bpe_tokenizer_json(),
            "tokenizer_config.json": json.dumps({"eos_token": "</s>", "chat_template": "{{ 'x' }}"}).encode(),
            "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}).encode()}


def bpe_tokenizer_json() -> bytes:
    """A trained byte-level BPE tokenizer.json (normalizer, pre-tokenizer, merges, decoder, added tokens)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizers.NFKC(), pre_tokenizers.ByteLevel(), decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 10,
                            trainers.BpeTrainer(vocab_size=31, special_tokens=["[UNK]"]))
    tok.add_special_tokens(["</s>"])
    return tok.to_str().encode()


def sentencepiece_seed(folder: Path) -> bytes:
    import sentencepiece

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=300, model_type="bpe",
        byte_fallback=True, minloglevel=2, normalization_rule_name="identity", remove_extra_whitespaces=False)
    return (folder / "tokenizer.model").read_bytes()


SEEDS: dict = {}  # module globals, not fixtures: hypothesis prints a failing example's every argument
WORK: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    SEEDS.update(gguf=gguf_seeds(folder), hf=hf_seed(folder), spm=sentencepiece_seed(folder))
    WORK[:] = [folder]
    yield SEEDS
    SEEDS.clear()


def work() -> Path:
    return WORK[0]


# -- byte mutations ----------------------------------------------------------------------------------------------
# Values that trip size arithmetic: zero, one, sign bits, all-ones, "just past" the real ones.
INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 0x7F, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1,
               1 << 63, (1 << 64) - 1]
mutation = st.tuples(st.sampled_from(["set", "int32", "int64", "flip", "cut", "delete", "insert"]),
                     st.integers(0, 1 << 20), st.integers(0, 255), st.sampled_from(INTERESTING),
                     st.booleans())
mutations = st.lists(mutation, min_size=1, max_size=4)


def mutate(data: bytes, ops, hot: int = 2048) -> bytes:
    """Apply byte-level mutations; most land in the first `hot` bytes, where headers live."""
    data = bytearray(data)
    for op, where, byte, value, anywhere in ops:
        if not data:
            break
        pos = where % (len(data) if anywhere else min(len(data), hot))
        if op == "set":
            data[pos] = byte
        elif op in ("int32", "int64"):
            width = 4 if op == "int32" else 8
            data[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif op == "flip":
            data[pos] ^= 1 << (byte % 8)
        elif op == "cut":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + 1 + byte % 16]
        else:
            data[pos:pos] = bytes([byte]) * (1 + value % 16)
    return bytes(data)


# -- GGUF ----------------------------------------------------------------------------------------------------------
@FUZZ
@given(which=st.integers(0, 2), ops=mutations)
def test_gguf_mutated_files(which, ops):
    path = work() / "case.gguf"
    path.write_bytes(mutate(SEEDS["gguf"][which], ops))
    must_load_or_refuse(lambda: load_checkpoint(path))


# GGUF value types: 0-7 and 10-12 scalars, 8 string, 9 array (gguf_header.py)
_PACK = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_bytes(meta: list[tuple[str, int, object]], tensors: list[tuple[str, tuple, int, int]], data: bytes,
               lie: int | None = None) -> bytes:
    """Serialise a GGUF v3 header by hand, so values may have any type id (gguf's writer would refuse).
    meta: (key, type id, value); an array's value is (item type, items). lie: a count written instead of
    the real number of metadata entries."""
    def string(s: str) -> bytes:
        raw = s.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw

    def value(kind, v) -> bytes:
        if kind == 8:
            return string(str(v))
        if kind == 9:
            item, items = v if isinstance(v, tuple) else (4, [v])  # an array of arrays holds arrays of u32
            return struct.pack("<IQ", item, len(items)) + b"".join(value(item, x) for x in items)
        if kind in _PACK:
            fmt = _PACK[kind]
            if fmt[-1] in "fd":
                return struct.pack(fmt, float(v) if isinstance(v, (int, float)) else 0.0)
            bits = struct.calcsize(fmt) * 8
            n = int(v) if isinstance(v, (int, float, bool)) and np.isfinite(float(v)) else 0
            return struct.pack(fmt.upper(), n % (1 << bits))
        return b""  # an unknown type id: nothing the reader could know the size of

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta) if lie is None else lie)
    for key, kind, v in meta:
        out += string(key) + struct.pack("<I", kind) + value(kind, v)
    for name, dims, kind, offset in tensors:
        out += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


def _kind_of(v) -> tuple[int, object]:
    if isinstance(v, bool):
        return 7, v
    if isinstance(v, int):
        return (4 if 0 <= v < 1 << 32 else 11), v
    if isinstance(v, float):
        return 6, v
    if isinstance(v, str):
        return 8, v
    items = [_kind_of(x) for x in v]
    return 9, (items[0][0] if items else 4, [x for _, x in items])


scalar = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from(INTERESTING), st.floats(width=32),
                   st.booleans(), st.text(max_size=12))
typed_value = st.one_of(
    st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 8, 13, 99]), scalar),
    st.tuples(st.just(9), st.tuples(st.sampled_from([4, 5, 6, 8, 7, 9, 13]), st.lists(scalar, max_size=40))))


@FUZZ
@given(data=st.data())
def test_gguf_random_headers(data):
    """The seed's metadata and tensor table, re-serialised with random values, types, shapes and offsets."""
    raw = SEEDS["gguf"][data.draw(st.integers(0, 2))]
    meta, infos = read_header(Path("seed.gguf"), raw)
    start = min(offset for *_, offset in infos)
    entries = [(k, *_kind_of(v)) for k, v in meta.items()]
    tensors = [(name, dims, kind, offset - start) for name, dims, kind, offset in infos]
    for _ in range(data.draw(st.integers(1, 5))):
        what = data.draw(st.sampled_from(["value", "delete", "add", "dims", "type", "offset", "drop tensor"]))
        if what in ("value", "delete") and entries:
            i = data.draw(st.integers(0, len(entries) - 1))
            if what == "delete":
                entries.pop(i)
            else:
                entries[i] = (entries[i][0], *data.draw(typed_value))
        elif what == "add":
            key = data.draw(st.sampled_from(["general.alignment", "llama.expert_count", "llama.expert_used_count",
                                             "llama.rope.scaling.type", "llama.attention.key_length",
                                             "llama.attention.sliding_window", "tokenizer.ggml.merges",
                                             "tokenizer.ggml.unknown_token_id", "llama.vocab_size"]) | st.text(max_size=20))
            entries.append((key, *data.draw(typed_value)))
        elif tensors:
            i = data.draw(st.integers(0, len(tensors) - 1))
            name, dims, kind, offset = tensors[i]
            if what == "dims":
                dims = tuple(data.draw(st.lists(st.sampled_from(INTERESTING), min_size=0, max_size=5)))
            elif what == "type":
                kind = data.draw(st.integers(0, 45) | st.sampled_from([1 << 31, (1 << 32) - 1]))
            elif what == "offset":
                offset = data.draw(st.sampled_from(INTERESTING) | st.integers(0, len(raw)))
            if what == "drop tensor":
                tensors.pop(i)
            else:
                tensors[i] = (name, dims, kind, offset)
    lie = data.draw(st.none() | st.sampled_from(INTERESTING))
    path = work() / "random-header.gguf"
    path.write_bytes(gguf_bytes(entries, tensors, raw[start:], lie))
    must_load_or_refuse(lambda: load_checkpoint(path))


# -- the GGUF vocabulary and config rules, fed metadata values of every type --------------------------------------
TOKENIZER_KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
                  "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                  "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.unknown_token_id",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"]
CONFIG_KEYS = ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
               "llama.attention.head_count_kv", "llama.attention.key_length", "llama.context_length",
               "llama.feed_forward_length", "llama.rope.freq_base", "llama.rope.scaling.type",
               "llama.rope.scaling.factor", "llama.expert_count", "llama.expert_used_count",
               "llama.attention.sliding_window", "llama.attention.clamp_kqv", "llama.vocab_size", "general.architecture"]
plain = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from(INTERESTING), st.floats(), st.booleans(),
                  st.text(max_size=8))
meta_value = st.one_of(plain, st.lists(plain, max_size=40), st.lists(st.text(max_size=4), max_size=40),
                       st.lists(st.sampled_from(["t0 t1", "t 0", "a b", "t1 t2", " "]), max_size=8))


def gguf_meta_case(folder: Path, changes: dict, kind: str):
    """The seed GGUF's metadata with `changes` applied, and its tensor shapes (read once per session)."""
    path = folder / "meta-seed.gguf"
    if not path.exists():
        path.write_bytes(SEEDS["gguf"][0])
    meta, infos, _ = _open(path)
    return {**meta, "tokenizer.ggml.model": kind, **changes}, {t.name: t.shape for t in infos.values()}, path


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(TOKENIZER_KEYS + CONFIG_KEYS), meta_value, max_size=4),
       kind=st.sampled_from(["gpt2", "llama"]))
def test_gguf_metadata_values(changes, kind):
    meta, shapes, path = gguf_meta_case(work(), changes, kind)
    must_load_or_refuse(lambda: build_config(meta, shapes, path))
    must_load_or_refuse(lambda: Tokenizer.from_gguf_metadata(meta, path))


# -- Hugging Face directories: safetensors weights, config.json and the tokenizer files ----------------------------
JSON_VALUES = [0, 1, -1, 2, 31, 32, 33, 1 << 31, 1 << 63, -(1 << 63), 1e308, -0.0, 0.5, None, True, "", "x", [], {},
               [1, 2], {"a": 1}, ["a b"], "[UNK]"]
json_edit = st.tuples(st.lists(st.integers(0, 1 << 16), min_size=1, max_size=5), st.sampled_from(["set", "delete",
                      "append"]), st.sampled_from(JSON_VALUES))


def mutate_json(raw: bytes, edits) -> bytes:
    """Walk to a random place in the document (each edit's path picks children by index) and change it."""
    obj = json.loads(raw)
    for path, op, value in edits:
        node = obj
        for step in path[:-1]:
            keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
            if not keys or not isinstance(node[keys[step % len(keys)]], (dict, list)):
                break
            node = node[keys[step % len(keys)]]
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            continue
        key = keys[path[-1] % len(keys)]
        if op == "delete":
            del node[key]
        elif op == "append" and isinstance(node, list):
            node.append(copy.deepcopy(node[key]))
        else:
            node[key] = copy.deepcopy(value)  # JSON_VALUES' lists and dicts are shared between examples
    return json.dumps(obj).encode()


HF_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]


def write_dir(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@FUZZ
@given(target=st.sampled_from(["model.safetensors"] * 2 + HF_FILES), as_json=st.booleans(), ops=mutations,
       edits=st.lists(json_edit, min_size=1, max_size=3))
def test_hf_directory_mutations(target, as_json, ops, edits):
    files = dict(SEEDS["hf"])
    if as_json and target.endswith(".json"):
        files[target] = mutate_json(files[target], edits)
    else:
        files[target] = mutate(files[target], ops, hot=1024)
    folder = write_dir(work() / "hf-case", files)
    must_load_or_refuse(lambda: load_checkpoint(folder))


def spm_case(folder, ops, with_config: bool) -> Path:
    files = {"tokenizer.model": mutate(SEEDS["spm"], ops, hot=len(SEEDS["spm"]))}
    if with_config:
        files["tokenizer_config.json"] = json.dumps({"added_tokens_decoder": {"300": {"content": "<x>", "special": True}},
                                                     "bos_token": "<s>"}).encode()
    return write_dir(folder, files)


@FUZZ
@given(ops=mutations, with_config=st.booleans())
def test_sentencepiece_model_mutations(ops, with_config):
    folder = spm_case(work() / "spm-case", ops, with_config)
    must_load_or_refuse(lambda: Tokenizer.from_hf_dir(folder))


# -- the crash corpus: inputs that once broke a loader -----------------------------------------------------------
def corpus_cases():
    for path in sorted(CORPUS.glob("*.gguf")):
        yield pytest.param(("gguf", path), id=path.name)
    for path in sorted(CORPUS.glob("*.json")):
        yield pytest.param(("json", path), id=path.name)


@pytest.mark.parametrize("case", corpus_cases())
def test_crash_corpus(seeds, tmp_path, case):
    """Each file is a crash fuzzing found; the fix is named in the case's `why` (JSON) or in the README."""
    kind, path = case
    if kind == "gguf":
        must_load_or_refuse(lambda: load_checkpoint(path))
        with pytest.raises(ModelFormatError):
            load_checkpoint(path)
        return
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec["loader"] == "gguf-metadata":
        meta, shapes, source = gguf_meta_case(tmp_path, spec["changes"], spec["kind"])
        must_load_or_refuse(lambda: Tokenizer.from_gguf_metadata(meta, source))
    elif spec["loader"] == "hf-directory":
        files = dict(SEEDS["hf"])
        for name, content in spec["files"].items():  # an object patches the seed's JSON, a string replaces the file
            patched = {**json.loads(files[name]), **content} if isinstance(content, dict) else None
            files[name] = json.dumps(patched).encode() if patched is not None else content.encode()
        folder = write_dir(tmp_path / "case", files)
        must_load_or_refuse(lambda: load_checkpoint(folder))
    elif spec["loader"] == "sentencepiece":
        data = bytearray(SEEDS["spm"])
        at = data.find(spec["piece"].encode())  # a piece of the model whose bytes the case replaces
        assert at > 0, "the seed model no longer holds the piece"
        data[at:at + len(spec["piece"])] = bytes.fromhex(spec["bytes"])
        folder = write_dir(tmp_path / "case", {"tokenizer.model": bytes(data)})
        with pytest.raises(ModelFormatError, match="not a valid sentencepiece model"):
            Tokenizer.from_hf_dir(folder)
    elif spec["loader"] == "sentencepiece-mutation":
        folder = spm_case(tmp_path / "case", [tuple(op) for op in spec["ops"]], spec["with_config"])
        must_load_or_refuse(lambda: Tokenizer.from_hf_dir(folder))
    else:
        raise AssertionError(f"unknown corpus loader {spec['loader']!r}")


# -- memory: counts and lengths that lie are refused before anything is sized by them ------------------------------
MEMORY_PROBE = r"""
import json, resource, struct, sys
from pathlib import Path
from engine.errors import ModelFormatError
from engine.loaders import load_checkpoint
cases = [Path(p) for p in json.loads(sys.argv[1])]
load_checkpoint(cases[0])  # warm: imports, tokenizer code paths
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
refused = 0
for path in cases[1:]:
    try:
        load_checkpoint(path)
    except ModelFormatError:
        refused += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "refused": refused}))
"""


def test_lying_sizes_allocate_nothing_big(seeds, tmp_path):
    """A few kB that claim 2^60 strings, a 2^40-row tensor, 2^31 layers or a terabyte header: the peak RSS of
    a process loading all of them grows by far less than any of those claims (measured in a fresh process)."""
    good = tmp_path / "good.gguf"
    good.write_bytes(seeds["gguf"][0])
    cases = [good]

    def gguf(name, meta, tensors=(), lie=None):
        path = tmp_path / name
        path.write_bytes(gguf_bytes(meta, list(tensors), b"\0" * 4096, lie))
        cases.append(path)

    arch = [("general.architecture", 8, "llama")]
    gguf("strings.gguf", arch + [("tokenizer.ggml.tokens", 9, (8, ["a"] * 4))], lie=None)
    (tmp_path / "strings.gguf").write_bytes((tmp_path / "strings.gguf").read_bytes().replace(
        struct.pack("<IQ", 8, 4), struct.pack("<IQ", 8, 1 << 60)))
    gguf("array.gguf", arch + [("tokenizer.ggml.scores", 9, (6, [0.0] * 4))])
    (tmp_path / "array.gguf").write_bytes((tmp_path / "array.gguf").read_bytes().replace(
        struct.pack("<IQ", 6, 4), struct.pack("<IQ", 6, 1 << 58)))
    gguf("counts.gguf", arch, lie=(1 << 62))
    gguf("tensor.gguf", arch, [("token_embd.weight", (1 << 20, 1 << 20), 0, 0)])
    gguf("layers.gguf", arch + [("llama.block_count", 4, (1 << 31) - 1), ("llama.context_length", 10, 1 << 62)])
    for name, patch in (("layers", {"num_hidden_layers": 1 << 31}), ("vocab", {"vocab_size": 1 << 40})):
        files = dict(seeds["hf"])
        files["config.json"] = json.dumps({**json.loads(files["config.json"]), **patch}).encode()
        cases.append(write_dir(tmp_path / f"hf-{name}", files))
    files = dict(seeds["hf"])
    files["model.safetensors"] = (1 << 40).to_bytes(8, "little") + files["model.safetensors"][8:]
    cases.append(write_dir(tmp_path / "hf-header", files))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, json.dumps([str(c) for c in cases])],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["refused"] == len(cases) - 1
    assert figures["growth_kib"] < 64 * 1024, figures  # the files are a few kB; the claims are terabytes
