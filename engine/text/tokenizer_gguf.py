"""Rebuild the vocabulary embedded in a GGUF file as an in-memory `tokenizers` pipeline that splits
text the way llama.cpp does, so our token ids equal llama.cpp's and transformers'.

Owns the byte-level alphabet, the split rule for each `tokenizer.ggml.pre` name, merges recovered
from sentencepiece scores and which tokens stay whole; the Tokenizer API lives in engine/text/tokenizer.py.
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


_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown")


def checked_metadata(meta: dict, path) -> dict:
    """`meta` with its tokenizer.* values checked and typed: a GGUF header is untrusted input, and a
    list where a number belongs (or a merge naming no token) would fail deep inside `tokenizers`,
    some of it as a Rust panic. Bad types and lengths -> ModelFormatError naming the key; special
    token ids outside the vocabulary are dropped with the key, as llama.cpp ignores them."""
    def fail(key, problem):
        raise ModelFormatError(path, f"metadata tokenizer.{key} {problem}")

    def str_list(key, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(key, "is not a list of strings")
        return value

    out = dict(meta)
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(path, "the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    str_list("ggml.tokens", tokens)
    for key, kinds in (("types", (int,)), ("scores", (int, float))):
        name = "token_type" if key == "types" else key
        value = meta.get(f"tokenizer.ggml.{name}")
        if value is None or value == []:
            out.pop(f"tokenizer.ggml.{name}", None)
            continue
        if not isinstance(value, list) or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            fail(f"ggml.{name}", "is not a list of numbers")
        if len(value) != len(tokens):
            raise ModelFormatError(path, f"{len(tokens)} tokens but {len(value)} token {key}")
    merges = meta.get("tokenizer.ggml.merges")
    if merges is not None and not all(" " in m for m in str_list("ggml.merges", merges)):
        fail("ggml.merges", "holds an entry that is not two pieces separated by a space")
    for name in ("ggml.model", "ggml.pre", "chat_template"):
        if meta.get(f"tokenizer.{name}") is not None and not isinstance(meta[f"tokenizer.{name}"], str):
            fail(name, "is not a string")
    for name in ("add_bos_token", "add_space_prefix"):
        if meta.get(f"tokenizer.ggml.{name}") is not None and not isinstance(meta[f"tokenizer.ggml.{name}"], (bool, int)):
            fail(f"ggml.{name}", "is not a boolean")
    for name in _ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"ggml.{name}_token_id", "is not a token id")
        if not 0 <= value < len(tokens):
            del out[key]
    return out


def gguf_backend(meta: dict, path) -> HFTokenizer:
    """A `tokenizers.Tokenizer` equivalent to the GGUF vocabulary in `meta` (a plain metadata dict)."""
    meta = checked_metadata(meta, path)
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
    if kind == "gpt2":
        backend, whole_ok = _byte_level(tokens, merges, meta.get("tokenizer.ggml.pre"), path)
    elif kind == "llama":
        backend, whole_ok = _sentencepiece_style(meta, tokens, merges, path), (lambda token: True)
    else:
        raise ModelFormatError(path, f"unsupported GGUF tokenizer model {str(kind)[:40]!r} (supported: gpt2, llama)")
    # Control and user-defined tokens are matched whole in text (llama.cpp does the same when it
    # parses special tokens), so "<|im_start|>" is one id, never "<", "|", "im", ...
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind_ in zip(tokens, types) if kind_ == CONTROL and whole_ok(t)])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED and whole_ok(t)])
    return backend


def _bpe(vocab: dict, merges: list, path, **options) -> HFTokenizer:
    """tokenizers' BPE, after checking what it would otherwise panic on: every merge's pieces and
    their join must be tokens."""
    for left, right in merges:
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise ModelFormatError(path, f"metadata tokenizer.ggml.merges: merging {left!r} and {right!r} "
                                         "names a piece that is not in the vocabulary")
    # One Rust call that holds the GIL throughout: ~50-120 ms for a 49k vocabulary on a 2-core box
    # (tokenizers has no GIL-free constructor; from_file / from_str hold it longer). So the window's
    # worker thread builds it in a helper process (engine/text/tokenizer_service.py).
    try:
        return HFTokenizer(models.BPE(vocab, merges, **options))
    except Exception as e:  # tokenizers raises plain Exception on what it refuses
        raise ModelFormatError(path, f"the vocabulary cannot be built: {e}") from None


def _byte_level(tokens, merges, pre, path):
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {}
    for i, token in enumerate(tokens):
        # A few converters store added tokens in plain UTF-8 rather than the byte alphabet.
        vocab.setdefault(token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode()), i)
    backend = _bpe(vocab, merges, path, fuse_unk=False)
    backend.pre_tokenizer = byte_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    # A "control" token spelled outside the alphabet is a converter's mislabel of an ordinary
    # piece; adding it whole would grow the vocabulary past the embedding table.
    return backend, (lambda token: set(token) <= spelled)


def _sentencepiece_style(meta, tokens, merges, path):
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    backend = _bpe({t: i for i, t in enumerate(tokens)}, merges or merges_from_scores(tokens, scores), path,
                   unk_token=tokens[unk] if unk is not None else None, fuse_unk=True, byte_fallback=True)
    # As sentencepiece and llama.cpp do: one "▁" always in front, every space a "▁". (A Metaspace
    # pre-tokenizer would skip the prefix when the text already starts with a space.)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
    return backend
