"""Rebuild the vocabulary embedded in a GGUF file as an in-memory `tokenizers` pipeline that splits
text the way llama.cpp does, so our token ids equal llama.cpp's and transformers'.

Owns the byte-level alphabet, the split rule for each `tokenizer.ggml.pre` name, merges recovered
from sentencepiece scores and which tokens stay whole; the Tokenizer API lives in engine/tokenizer.py.
"""
from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

from engine.errors import ModelFormatError

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split rules, written out from llama.cpp's pre-tokenizer table. `tokenizer.ggml.pre` names the
# rule the vocabulary was trained with; a wrong rule still round-trips text but gives other ids.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")  # the same rule, digits one at a time
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_NOT_WORD = r"[^\r\n\p{L}\p{N}]?"


def _cased_words(suffix: str) -> str:
    """Words split at case changes ("camelCase" -> "camel", "Case"), as o200k-style rules do."""
    return f"{_NOT_WORD}{_UPPER}*{_LOWER}+{suffix}|{_NOT_WORD}{_UPPER}+{_LOWER}*{suffix}"


_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT4O = _cased_words(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?") + r"|\p{N}{1,3}" + _TAIL
_TEKKEN = _cased_words("") + r"|\p{N}" + _TAIL

SPLIT_RULES = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "dbrx", "smaug-bpe"], _LLAMA3),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], _QWEN2),
    **dict.fromkeys(["gpt-4o", "llama4"], _GPT4O),
    "tekken": _TEKKEN,
}
# GPT-2's rule after every digit is cut off on its own (StarCoder-lineage vocabularies, SmolLM).
DIGITS_FIRST = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that byte-level vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:  # unprintable bytes borrow code points above 255, in byte order
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_pre_tokenizer(pre: str | None):
    """The split rule for a byte-level vocabulary; unknown names get GPT-2's, as transformers does."""
    if pre in SPLIT_RULES:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_RULES[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_FIRST:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Sentencepiece vocabularies carry scores, not merges. llama.cpp merges the adjacent pair whose
    joined piece scores best, so every split of a piece into two vocabulary pieces is a merge,
    ranked by that piece's score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for token, index in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[index], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def gguf_backend(meta: dict, path) -> HFTokenizer:
    """A `tokenizers.Tokenizer` equivalent to the GGUF vocabulary in `meta` (a plain metadata dict)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(path, "the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelFormatError(path, f"{len(tokens)} tokens but {len(types)} token types")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
    if kind == "gpt2":
        backend, whole_ok = _byte_level(tokens, merges, meta.get("tokenizer.ggml.pre"))
    elif kind == "llama":
        backend, whole_ok = _sentencepiece_style(meta, tokens, merges), (lambda token: True)
    else:
        raise ModelFormatError(path, f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2, llama)")
    # Control and user-defined tokens are matched whole in text (llama.cpp does the same when it
    # parses special tokens), so "<|im_start|>" is one id, never "<", "|", "im", ...
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind_ in zip(tokens, types) if kind_ == CONTROL and whole_ok(t)])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED and whole_ok(t)])
    return backend


def _byte_level(tokens, merges, pre):
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {}
    for i, token in enumerate(tokens):
        # A few converters store added tokens in plain UTF-8 rather than the byte alphabet.
        vocab.setdefault(token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode()), i)
    backend = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = byte_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    # A "control" token spelled outside the alphabet is a converter's mislabel of an ordinary
    # piece; adding it whole would grow the vocabulary past the embedding table.
    return backend, (lambda token: set(token) <= spelled)


def _sentencepiece_style(meta, tokens, merges):
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    backend = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges or merges_from_scores(tokens, scores),
                                     unk_token=tokens[unk] if unk is not None else None,
                                     fuse_unk=True, byte_fallback=True))
    # As sentencepiece and llama.cpp do: one "▁" always in front, every space a "▁". (A Metaspace
    # pre-tokenizer would skip the prefix when the text already starts with a space.)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
    return backend
