"""Our tokenizer against transformers' on the default model's GGUF vocabulary (and on other GGUF
split rules), against sentencepiece on a model trained here, the tokenizer.json path, and the
streaming decoder against one-shot decoding. The `tokenizers` pipelines are checked both where the
CLI builds them (in process) and where the window's worker does (off the main thread: in the helper
process of engine/text/tokenizer_service.py)."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ModelFormatError
from engine.loaders.gguf_file import read_metadata
from engine.text.tokenizer import Tokenizer
from engine.text.tokenizer_gguf import BYTE, CONTROL, NORMAL, UNKNOWN
from engine.text.tokenizer_service import RemoteBackend
from tests.threads import on_a_thread

WHERE = ["in process", "helper process"]

MIXED = (
    "Hello, world! It's 2026 and the café serves crème brûlée. I'M camelCase XMLHttpRequest don't\n"
    "def square(x: int) -> int:\n    return x ** 2  # tabs\tand  spaces   here\n\n\n(hello) 3.14159 a/b/c\n"
    "日本語のテキスト、中文文本，한국어 텍스트。\n"
    "Emoji: 👩‍👩‍👧‍👦 🎉🚀 👍🏽 🏳️‍🌈 — done.\r\n"
    "<|im_start|>user\nhi<|im_end|>\n"
    "      \n\t\t  trailing   "
)
SHORT = ["", " ", "a", "  a", "\n", "Paris", " Paris.", "<|im_start|>", "<|im_start|>user\nhi<|im_end|>\n",
         "1234567890", "x" * 300, "é", "🚀", " \t\n "]


@pytest.fixture(scope="module")
def meta(default_gguf):
    return read_metadata(default_gguf)


def off_main_thread(build):
    """build() on another thread, as the window's worker runs it: there the pipeline is built (and used)
    in the helper process. Its result or its exception."""
    return on_a_thread(build)


def built(where: str, build):
    if where == "in process":
        return build()
    tokenizer = off_main_thread(build)
    assert isinstance(tokenizer.backend, RemoteBackend)
    return tokenizer


@pytest.fixture(scope="module", params=WHERE)
def tok(request, meta, default_gguf):
    return built(request.param, lambda: Tokenizer.from_gguf_metadata(meta, default_gguf))


@pytest.mark.parametrize("text", [MIXED] + SHORT)
def test_ids_equal_transformers_and_round_trip(tok, hf_default_tokenizer, text):
    ids = tok.encode(text)
    assert ids == hf_default_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "tekken", "gpt-4o"])
def test_split_rule_per_pre_type_equals_transformers(meta, default_gguf, pre, where):
    """The default vocabulary under other `tokenizer.ggml.pre` names: each split rule gives
    transformers' ids, and they differ from GPT-2's (so the rule is really in use)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer_dict, _ = get_gguf_tokenizer(str(default_gguf))
    reference, _ = convert_gguf_tokenizer(arch, dict(tokenizer_dict, pre_tokenizer_type=pre))
    def rule(name):
        return built(where, lambda: Tokenizer.from_gguf_metadata(dict(meta, **{"tokenizer.ggml.pre": name}), default_gguf))

    ours, gpt2 = rule(pre), rule("gpt2")
    assert ours.encode(MIXED) == reference.encode(MIXED, add_special_tokens=False).ids != gpt2.encode(MIXED)
    assert ours.decode(ours.encode(MIXED)) == MIXED


def test_special_tokens(tok):
    im_start, im_end = tok.encode("<|im_start|>"), tok.encode("<|im_end|>")
    assert len(im_start) == len(im_end) == 1
    assert tok.encode("<|im_start|>assistant<|im_end|>") == im_start + tok.encode("assistant") + im_end
    assert tok.bos_id == 1 and tok.bos_token == "<|im_start|>" and tok.vocab_size == 49152
    assert tok.eos_ids == (2,) and tok.eos_token == "<|im_end|>"
    assert set(range(17)) <= tok.special_ids and tok.encode("Paris")[0] not in tok.special_ids
    assert tok.decode(tok.encode("<|im_start|>assistant<|im_end|>"), skip_special_tokens=True) == "assistant"
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")  # the file says no BOS
    assert tok.chat_template.startswith("{% for message in messages %}")


def test_token_text(tok):
    assert tok.token_text(tok.encode(" ok")[0]) == " ok"
    assert tok.token_text(2) == "<|im_end|>"
    pieces = [tok.token_text(i) for i in tok.encode(" 🎉")]
    assert "".join(pieces).count("<0x") == 4 and pieces[0].startswith(" ")  # " " + bytes of the emoji


def test_stream_decoder_never_emits_half_a_character(tok):
    text = "Emoji 👩‍👩‍👧‍👦 and 日本語 — ok 🏳️‍🌈"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens hold part of a character
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in p for p in pieces)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(0, 49151), max_size=40))
def test_stream_decoder_equals_decode_on_any_ids(tok, ids):
    """Random ids make invalid UTF-8 and special tokens: the stream still adds up to decode()."""
    stream = tok.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)


@pytest.mark.parametrize("where", WHERE)
def test_tokenizer_json_directory(tmp_path, tok, where):
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    loaded = built(where, lambda: Tokenizer.from_hf_dir(tmp_path))
    assert loaded.encode(MIXED) == tok.encode(MIXED) and loaded.decode(tok.encode(MIXED)) == MIXED
    assert loaded.eos_ids == (2, 0) and loaded.bos_id == 1 and loaded.special_ids >= {0, 1, 2}
    assert loaded.chat_template == "{{ messages[0]['content'] }}"
    assert not loaded.add_bos  # no add_bos_token and the post-processor adds nothing


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A small BPE sentencepiece model with llama-style settings (byte fallback, no whitespace folding).
    256 of its 500 pieces are byte-fallback pieces; the rest are real merges."""
    import sentencepiece

    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    lines = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(400)]
    corpus.write_text("\n".join(lines + ["Glassbox shows attention, routing and sampling."] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=500, model_type="bpe",
        byte_fallback=True, remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
    return directory


@pytest.fixture(scope="module")
def sp(spm_dir):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))


@pytest.fixture(scope="module", params=WHERE)
def spm_gguf(request, sp, spm_dir):
    """The same vocabulary as a GGUF 'llama' file stores it: pieces + scores + types, no merges."""
    n = sp.GetPieceSize()
    kinds = [UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else BYTE if sp.IsByte(i) else NORMAL
             for i in range(n)]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.IdToPiece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.GetScore(i) for i in range(n)], "tokenizer.ggml.token_type": kinds,
            "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
            "tokenizer.ggml.unknown_token_id": sp.unk_id()}
    return built(request.param, lambda: Tokenizer.from_gguf_metadata(meta, spm_dir / "spm.gguf"))


# 😀, ü, 漢 are not in the training text: they go through byte fallback.
SPM_TEXTS = ["the quick brown fox", "Glassbox: attention 😀 ünïcödé 漢", "  two  spaces", "jumps over 1234\nnext", " x"]


def test_sentencepiece_model_trained_here(spm_dir, sp):
    tok = Tokenizer.from_hf_dir(spm_dir)
    for text in SPM_TEXTS:
        ids = tok.encode(text)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.bos_id == sp.bos_id() and tok.eos_ids == (sp.eos_id(),) and tok.add_bos and tok.vocab_size == 500
    the = sp.encode("the")[0]
    assert sp.id_to_piece(the) == "▁the" and tok.token_text(the) == " the"
    assert tok.token_text(sp.piece_to_id("<0xF0>")) == "<0xF0>" and tok.token_text(sp.bos_id()) == "<s>"


def test_sentencepiece_directory_with_added_tokens(spm_dir, sp, tmp_path):
    """HF keeps chat tokens beside tokenizer.model (tokenizer_config's added_tokens_decoder)."""
    (tmp_path / "tokenizer.model").write_bytes((spm_dir / "tokenizer.model").read_bytes())
    added = {"500": {"content": "<|im_start|>", "special": True}, "501": {"content": "<|im_end|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": added, "eos_token": "<|im_end|>", "add_bos_token": True}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    text = "<|im_start|>the fox<|im_end|>"
    ids = tok.encode(text, add_special_tokens=True)
    assert ids == [sp.bos_id(), 500] + sp.encode("the fox") + [501]
    assert tok.decode(ids) == "<s>" + text and tok.decode(ids, skip_special_tokens=True) == "the fox"
    assert tok.eos_ids == (501, sp.eos_id()) and tok.eos_token == "<|im_end|>" and tok.bos_token == "<s>"
    assert tok.vocab_size == 502 and {sp.bos_id(), 500, 501} <= tok.special_ids


def test_gguf_sentencepiece_vocabulary_matches_sentencepiece(spm_gguf, sp):
    """Merges recovered from scores, "▁" prefix and byte fallback: the rebuilt BPE tokenizes like sentencepiece."""
    for text in SPM_TEXTS:
        assert spm_gguf.encode(text) == sp.encode(text)
        assert spm_gguf.decode(spm_gguf.encode(text)) == text
    # No add_bos_token key: llama.cpp's default for sentencepiece vocabularies is to add BOS.
    assert spm_gguf.encode("fox", add_special_tokens=True) == [sp.bos_id()] + sp.encode("fox")
    assert spm_gguf.token_text(sp.encode("the")[0]) == " the"


@pytest.mark.parametrize("source", ["sentencepiece", "gguf"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_stream_decoder_on_sentencepiece_vocabularies(spm_dir, spm_gguf, source, data):
    tok = Tokenizer.from_hf_dir(spm_dir) if source == "sentencepiece" else spm_gguf
    text = data.draw(st.sampled_from(SPM_TEXTS))
    ids = data.draw(st.sampled_from([tok.encode(text), data.draw(st.lists(st.integers(0, 499), max_size=30))]))
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids)


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="tokenizer.model.*sentencepiece"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="tokenizer_config.json: invalid JSON"):
        Tokenizer.from_hf_dir(tmp_path)
    with pytest.raises(ModelFormatError, match="x.gguf: the GGUF file has no tokenizer vocabulary"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2"}, tmp_path / "x.gguf")
    with pytest.raises(ModelFormatError, match="unsupported GGUF tokenizer model 'rwkv'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")
    with pytest.raises(ModelFormatError, match="2 tokens but 1 token types"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
                                      "tokenizer.ggml.token_type": [1]}, "x.gguf")


def test_the_helper_process_reports_errors_as_the_process_itself_does(tmp_path):
    """A vocabulary `tokenizers` would refuse, and a broken tokenizer.json: the same ModelFormatError,
    with the same message, whichever process built it."""
    bad = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": ["a c"]}
    with pytest.raises(ModelFormatError, match="not in the vocabulary") as here:
        Tokenizer.from_gguf_metadata(bad, tmp_path / "x.gguf")
    with pytest.raises(ModelFormatError) as there:
        off_main_thread(lambda: Tokenizer.from_gguf_metadata(bad, tmp_path / "x.gguf"))
    assert str(there.value) == str(here.value)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelFormatError, match="tokenizer.json: invalid tokenizer"):
        off_main_thread(lambda: Tokenizer.from_hf_dir(tmp_path))
    assert off_main_thread(lambda: Tokenizer.from_gguf_metadata(
        {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]},
        "y.gguf")).encode("abba") == [2, 1, 0]  # and it still serves after the failures


def test_without_a_helper_process_the_worker_builds_in_process(monkeypatch, meta, default_gguf):
    """Where no subprocess can start (a sandbox), building off the main thread falls back to this process."""
    from engine.text import tokenizer_service

    def refuse():
        raise OSError("no subprocesses here")

    monkeypatch.setattr(tokenizer_service, "_service", tokenizer_service._Service())
    monkeypatch.setattr(tokenizer_service, "_spawn", refuse)
    tok = off_main_thread(lambda: Tokenizer.from_gguf_metadata(meta, default_gguf))
    assert not isinstance(tok.backend, RemoteBackend) and tok.encode("Paris")
    assert not tokenizer_service.wanted()  # and it does not try again


def helper_decode(tokenizer, ids, skip=False):
    """The helper process's own `tokenizers` decode: what RemoteBackend's local decoding must equal."""
    from engine.text.tokenizer_service import _service

    return _service.call("decode", tokenizer.backend.handle, list(ids), skip)


@pytest.fixture(scope="module")
def remote_vocabularies(meta, default_gguf, spm_dir, sp, tmp_path_factory):
    """A helper-process tokenizer for each decoder pipeline: byte-level (the default GGUF; a
    tokenizer.json with added tokens outside the byte alphabet, special and not) and sentencepiece
    style with its leading-space strip (GGUF 'llama') and without (add_space_prefix false)."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    default = off_main_thread(lambda: Tokenizer.from_gguf_metadata(meta, default_gguf))
    directory = tmp_path_factory.mktemp("added")
    extended = HFTokenizer.from_str(Tokenizer.from_gguf_metadata(meta, default_gguf).backend.to_str())
    extended.add_tokens([AddedToken("    \n", normalized=False), AddedToken("héllo wörld", normalized=False)])
    extended.add_special_tokens([AddedToken("<tool call>", special=True)])
    extended.save(str(directory / "tokenizer.json"))
    added = off_main_thread(lambda: Tokenizer.from_hf_dir(directory))
    n = sp.GetPieceSize()
    kinds = [UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else BYTE if sp.IsByte(i) else NORMAL
             for i in range(n)]
    spm = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.IdToPiece(i) for i in range(n)],
           "tokenizer.ggml.scores": [sp.GetScore(i) for i in range(n)], "tokenizer.ggml.token_type": kinds}
    with_prefix = off_main_thread(lambda: Tokenizer.from_gguf_metadata(spm, spm_dir / "spm.gguf"))
    no_prefix = off_main_thread(lambda: Tokenizer.from_gguf_metadata(
        {**spm, "tokenizer.ggml.add_space_prefix": False}, spm_dir / "spm.gguf"))
    return {"byte-level gguf": default, "byte-level json, added tokens": added,
            "sentencepiece, strip": with_prefix, "sentencepiece, no strip": no_prefix}


@pytest.mark.parametrize("name", ["byte-level gguf", "byte-level json, added tokens", "sentencepiece, strip",
                                  "sentencepiece, no strip"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_local_decoding_equals_the_helpers_tokenizers(remote_vocabularies, name, data):
    """RemoteBackend decodes here, from the pieces (engine/text/piece_decoder.py), so streaming a reply
    costs no round trip to the helper: on any ids (byte pieces that split or break UTF-8, special and
    added tokens, leading spaces) it equals the helper's `tokenizers`, special tokens skipped or not."""
    tok = remote_vocabularies[name]
    assert tok.backend._local is not None  # these pipelines decode locally
    n, special = tok.vocab_size, sorted(tok.special_ids)
    bytes_ = [i for i in range(n) if len(tok.backend.id_to_token(i)) == 1 or tok.is_byte_piece(i)]
    some = st.one_of(st.integers(0, n - 1), st.sampled_from(bytes_), st.sampled_from(special),
                     st.integers(n - 3, n - 1))
    ids = data.draw(st.lists(some, max_size=24))
    skip = data.draw(st.booleans())
    assert tok.decode(ids, skip_special_tokens=skip) == helper_decode(tok, ids, skip)


def test_text_round_trips_through_local_decoding(remote_vocabularies):
    tok = remote_vocabularies["byte-level json, added tokens"]
    text = "x    \nhéllo wörld<tool call> " + MIXED
    assert tok.decode(tok.encode(text)) == text == helper_decode(tok, tok.encode(text))
    for name in ("sentencepiece, strip", "sentencepiece, no strip"):
        spm = remote_vocabularies[name]
        for text in SPM_TEXTS:
            assert spm.decode(spm.encode(text)) == helper_decode(spm, spm.encode(text))
