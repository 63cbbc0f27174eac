"""Our tokenizer against transformers' on the default model's GGUF vocabulary, plus the other
two sources (tokenizer.json, sentencepiece) and the streaming decoder."""
import json

import pytest

from engine.errors import ModelFormatError
from engine.loaders.gguf_file import read_metadata
from engine.tokenizer import CONTROL, Tokenizer

MIXED = (
    "Hello, world! It's 2026 and the café serves crème brûlée.\n"
    "def square(x: int) -> int:\n    return x ** 2  # tabs\tand  spaces   here\n\n\n"
    "日本語のテキスト、中文文本，한국어 텍스트。\n"
    "Emoji: 👩‍👩‍👧‍👦 🎉🚀 👍🏽 — done.\r\n"
    "      \n\t\t  trailing   "
)
SHORT = ["", " ", "a", "  a", "\n", "Paris", " Paris.", "<|im_start|>user\nhi<|im_end|>\n", "1234567890", "x" * 300]


@pytest.fixture(scope="module")
def tok(default_gguf):
    return Tokenizer.from_gguf_metadata(read_metadata(default_gguf), default_gguf)


@pytest.fixture(scope="module")
def reference(hf_default_tokenizer):
    return hf_default_tokenizer


@pytest.mark.parametrize("text", [MIXED] + SHORT)
def test_ids_equal_transformers_and_round_trip(tok, reference, text):
    ids = tok.encode(text)
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant<|im_end|>")
    assert ids[0] == tok.encode("<|im_start|>")[0] and len(tok.encode("<|im_start|>")) == 1
    assert tok.encode("<|im_end|>")[0] in tok.eos_ids
    assert tok.bos_id == 1 and tok.vocab_size == 49152
    assert tok.decode(ids, skip_special_tokens=True) == "assistant"


def test_stream_decoder_never_emits_half_a_character(tok):
    text = "Emoji 👩‍👩‍👧‍👦 and 日本語 — ok"
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    assert tok.token_text(ids[-1]) == " ok"
    assert any(tok.token_text(i).startswith("<0x") for i in ids)  # split emoji bytes read as bytes


def test_tokenizer_json_directory(tmp_path, tok):
    tok._backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"}))
    loaded = Tokenizer.from_hf_dir(tmp_path)
    assert loaded.encode(MIXED) == tok.encode(MIXED)
    assert loaded.eos_ids[0] == tok.encode("<|im_end|>")[0]
    assert loaded.chat_template == "{{ messages[0]['content'] }}"


def train_sentencepiece(directory):
    """A small BPE sentencepiece model with llama-style settings (no whitespace folding)."""
    import sentencepiece

    corpus = directory / "corpus.txt"
    lines = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(400)]
    corpus.write_text("\n".join(lines + ["Glassbox shows attention, routing and sampling."] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
    return sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))


SPM_TEXTS = ["the quick brown fox", "Glassbox: attention 😀 ünïcödé", "  two  spaces", "jumps over 1234\nnext"]


def test_sentencepiece_model_trained_here(tmp_path):
    sp = train_sentencepiece(tmp_path)
    tok = Tokenizer.from_hf_dir(tmp_path)
    for text in SPM_TEXTS:
        ids = tok.encode(text)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids) == text


def test_gguf_sentencepiece_vocabulary_matches_sentencepiece(tmp_path):
    """A GGUF 'llama' vocabulary (pieces + scores, no merges) rebuilt as BPE tokenizes like sentencepiece."""
    sp = train_sentencepiece(tmp_path)
    n = sp.GetPieceSize()
    kinds = [2 if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else 6 if sp.IsByte(i) else 1 for i in range(n)]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.IdToPiece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.GetScore(i) for i in range(n)], "tokenizer.ggml.token_type": kinds,
            "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
            "tokenizer.ggml.unknown_token_id": sp.unk_id(), "tokenizer.ggml.add_bos_token": True}
    tok = Tokenizer.from_gguf_metadata(meta, tmp_path / "spm.gguf")
    for text in SPM_TEXTS:
        assert tok.encode(text) == sp.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("fox", add_special_tokens=True)[0] == sp.bos_id()


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="sentencepiece"):
        Tokenizer.from_hf_dir(tmp_path)
    with pytest.raises(ModelFormatError, match="no tokenizer vocabulary"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2"}, tmp_path / "x.gguf")
    with pytest.raises(ModelFormatError, match="unsupported GGUF tokenizer model 'rwkv'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")
