"""One Tokenizer over the three places a vocabulary can come from: an HF tokenizer.json, a
sentencepiece tokenizer.model, or the vocabulary embedded in a GGUF file (byte-level BPE
"gpt2" or sentencepiece-style "llama"). GGUF vocabularies are rebuilt as `tokenizers`
pipelines the way transformers rebuilds them, so token ids agree with the reference.

Also: special tokens, and a streaming decoder that never emits half a UTF-8 character.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

from engine.errors import ModelFormatError

CONTROL, USER_DEFINED = 3, 4  # GGUF token types that must stay whole in text
REPLACEMENT = "\ufffd"


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Sentencepiece vocabularies carry scores, not merges: every way of splitting a token into two
    vocabulary pieces is a merge, ranked by the merged token's score (best first)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for token, index in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[index], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _gguf_backend(meta: dict, path) -> HFTokenizer:
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(path, "the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        alphabet = byte_alphabet()
        allowed = set(alphabet.values())
        vocab = {}
        for i, t in enumerate(tokens):
            spelled = t if set(t) <= allowed else "".join(alphabet[b] for b in t.encode("utf-8"))
            vocab.setdefault(spelled, i)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
        backend = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        special_ok = lambda t: set(t) <= allowed  # noqa: E731 - a control token outside the alphabet is a mislabel
    elif kind == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = ([tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
                  if meta.get("tokenizer.ggml.merges") else merges_from_scores(tokens, scores))
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        backend = HFTokenizer(models.BPE(vocab, merges, unk_token=tokens[unk] if unk is not None else None,
                                         fuse_unk=True, byte_fallback=True))
        # As sentencepiece and llama.cpp do: one "▁" always in front, every space a "▁". (A Metaspace
        # pre-tokenizer would skip the prefix when the text already starts with a space.)
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        backend.normalizer = normalizers.Sequence(
            ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                            + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
        special_ok = lambda t: True  # noqa: E731
    else:
        raise ModelFormatError(path, f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2, llama)")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind_ in zip(tokens, types) if kind_ == CONTROL and special_ok(t)])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED])
    return backend


class _SentencePieceBackend:
    """A sentencepiece .model behind the small part of the `tokenizers` API we use."""

    def __init__(self, model_file: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
        except (OSError, RuntimeError) as e:
            raise ModelFormatError(model_file, f"not a valid sentencepiece model: {e}") from None

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids, skip_special_tokens=False) -> str:
        return self.sp.DecodeIds(list(ids))

    def token_to_id(self, token: str):
        i = self.sp.PieceToId(token)
        return None if i == self.sp.unk_id() and token != self.sp.IdToPiece(i) else i

    def id_to_token(self, i: int) -> str:
        return self.sp.IdToPiece(i)

    def get_vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def special_ids(self) -> set[int]:
        return {i for i in range(self.sp.GetPieceSize()) if self.sp.IsControl(i)}


class Tokenizer:
    def __init__(self, backend, bos_id: int | None, eos_ids: tuple[int, ...], add_bos: bool,
                 chat_template: str | None, source):
        self._backend = backend
        self.bos_id, self.eos_ids, self.add_bos = bos_id, tuple(eos_ids), add_bos
        self.chat_template, self.source = chat_template, source
        self.bos_token = self.token_text(bos_id) if bos_id is not None else ""
        self.eos_token = self.token_text(eos_ids[0]) if eos_ids else ""

    # construction -----------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict, path) -> "Tokenizer":
        backend = _gguf_backend(meta, path)
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = [meta.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
        eos = tuple(dict.fromkeys(int(e) for e in eos if e is not None))
        # ChatML models end a turn with <|im_end|>, which GGUF metadata often does not mark as EOS.
        im_end = backend.token_to_id("<|im_end|>")
        if im_end is not None and im_end not in eos:
            eos += (im_end,)
        return cls(backend, bos, eos, bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   meta.get("tokenizer.chat_template"), path)

    @classmethod
    def from_hf_dir(cls, path) -> "Tokenizer":
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            try:
                backend = HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # tokenizers raises plain Exception on malformed files
                raise ModelFormatError(path / "tokenizer.json", f"invalid tokenizer: {e}") from None
        elif (path / "tokenizer.model").is_file():
            backend = _SentencePieceBackend(path / "tokenizer.model")
        else:
            raise ModelFormatError(path, "no tokenizer.json or tokenizer.model")

        def token_id(entry):
            text = entry.get("content") if isinstance(entry, dict) else entry
            return backend.token_to_id(text) if text else None

        generation = _read_json(path / "generation_config.json")
        model_config = _read_json(path / "config.json")
        bos = token_id(config.get("bos_token"))
        if bos is None:
            bos = generation.get("bos_token_id", model_config.get("bos_token_id"))
        eos = generation.get("eos_token_id", model_config.get("eos_token_id"))
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if (named := token_id(config.get("eos_token"))) is not None:
            eos.insert(0, named)
        template = config.get("chat_template")
        if isinstance(template, list):  # some repos ship several named templates
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(backend, bos, tuple(dict.fromkeys(eos)), bool(config.get("add_bos_token", False)), template, path)

    # use ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if isinstance(self._backend, _SentencePieceBackend):
            ids = self._backend.encode(text)
        else:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (for probability panels); byte pieces show as <0xNN>."""
        text = self.decode([token_id])
        if REPLACEMENT in text:
            raw = self._backend.id_to_token(token_id) or ""
            alphabet = {c: b for b, c in byte_alphabet().items()}
            if raw and all(c in alphabet for c in raw):
                return "".join(f"<0x{alphabet[c]:02X}>" for c in raw)
            return raw or text
        return text

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Incremental detokenization: decode a sliding window and emit only completed text.

    Decoding token by token breaks multi-byte characters split across tokens and word-initial
    spaces; decoding a window that starts a few tokens back and diffing against its previous
    text avoids both, and holds text back while it ends in an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self.tok.decode(self.ids[self.prefix:self.read])
        now = self.tok.decode(self.ids[self.prefix:])
        if (now.endswith(REPLACEMENT) and not final) or len(now) <= len(before):
            return ""
        self.prefix, self.read = max(self.read - 4, 0), len(self.ids)  # keep a little context
        # The new window starts later, so its text is a suffix of `now`; remember where we are.
        return now[len(before):]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(path, f"invalid JSON: {e}") from None
    return data if isinstance(data, dict) else {}
