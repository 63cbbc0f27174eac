"""One Tokenizer over the three places a vocabulary can come from: an HF directory with
tokenizer.json or a sentencepiece tokenizer.model, or the vocabulary embedded in a GGUF file
(rebuilt in engine/text/tokenizer_gguf.py; off the main thread both `tokenizers` builds run in a helper
process, engine/text/tokenizer_service.py). Also owns special tokens, the per-token display text
and a streaming decoder that never emits half a UTF-8 character. Chat templates: chat_template.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelFormatError
from engine.text import tokenizer_service
from engine.text.tokenizer_gguf import CONTROL, byte_alphabet, checked_metadata, gguf_backend

REPLACEMENT = "\ufffd"
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Turn-end tokens of common chat formats: GGUF files often mark only <|endoftext|> or </s> as EOS,
# yet a chat reply ends at these (llama.cpp applies the same list).
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


class _SentencePieceBackend:
    """A sentencepiece .model plus the added tokens HF keeps beside it, behind the part of the
    `tokenizers` API the Tokenizer uses. Text is cut at added tokens and each piece encoded on its
    own, as transformers' sentencepiece tokenizers do."""

    def __init__(self, model_file: Path, added: dict[str, int], special: set[str]):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
            self.pieces = self.sp.GetPieceSize()
            for i in range(self.pieces):  # a piece that is not UTF-8 would fail every later decode
                self.sp.IdToPiece(i)
        except (OSError, RuntimeError, ValueError) as e:  # ValueError: pieces that are not UTF-8
            raise ModelFormatError(model_file, f"not a valid sentencepiece model: {e}") from None
        self.added, self.added_text = added, {i: t for t, i in added.items()}
        self.special = {i for i in range(self.pieces) if self.sp.IsControl(i)}
        self.special |= {added[t] for t in special if t in added}
        longest_first = sorted(added, key=len, reverse=True)
        self._cut = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if added else None

    def encode(self, text: str) -> list[int]:
        if self._cut is None:
            return list(self.sp.EncodeAsIds(text))
        ids = []
        for n, part in enumerate(self._cut.split(text)):  # odd parts are the added tokens themselves
            ids += [self.added[part]] if n % 2 else (self.sp.EncodeAsIds(part) if part else [])
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        # sentencepiece drops control pieces and knows no added ids, so decode the runs between them.
        out, run = [], []
        for i in ids:
            if i in self.added_text or i in self.special:
                out.append(self.sp.DecodeIds(run))
                run = []
                if not (skip_special_tokens and i in self.special):
                    out.append(self.id_to_token(i))
            elif 0 <= i < self.pieces:  # ids past the vocabulary (a padded embedding) decode to nothing, as in tokenizers
                run.append(i)
        return "".join(out) + self.sp.DecodeIds(run)

    def token_to_id(self, token: str):
        if token in self.added:
            return self.added[token]
        i = self.sp.PieceToId(token)  # the unknown id when absent: -1 in a model without one
        return i if 0 <= i < self.pieces and self.sp.IdToPiece(i) == token else None

    def id_to_token(self, i: int):
        return self.added_text.get(i) or (self.sp.IdToPiece(i) if 0 <= i < self.pieces else None)

    def get_vocab_size(self) -> int:
        return max([self.pieces, *(i + 1 for i in self.added_text)])


class Tokenizer:
    """encode/decode for one vocabulary, whichever file it came from; build with a from_* method."""

    def __init__(self, backend, *, bos_id: int | None, eos_ids, add_bos: bool, chat_template: str | None, source):
        self._backend, self.source = backend, source
        self.bos_id, self.eos_ids, self.add_bos = bos_id, tuple(eos_ids), add_bos
        self.chat_template = chat_template
        if isinstance(backend, HFTokenizer):
            special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        else:
            special = backend.special
        self.special_ids = frozenset(special | set(self.eos_ids) | ({bos_id} if bos_id is not None else set()))
        self.bos_token = self._name(bos_id) if bos_id is not None else ""
        self.eos_token = self._name(self.eos_ids[0]) if self.eos_ids else ""
        self._texts: dict[int, str] = {}  # token_text's answers: every step's top-N asks again (~0.2 ms each)

    @classmethod
    def from_gguf_metadata(cls, meta: dict, path) -> "Tokenizer":
        meta = checked_metadata(meta, path)
        # Off the main thread (the window's worker) the build runs in a helper process: it holds the GIL.
        backend = tokenizer_service.build(lambda: gguf_backend(meta, path),
                                          lambda: tokenizer_service.gguf_backend(meta, path))
        eos = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        types = meta.get("tokenizer.ggml.token_type") or ()
        eos += [i for i in map(backend.token_to_id, TURN_ENDS) if i is not None and types[i:i + 1] == [CONTROL]]
        # llama.cpp adds BOS to sentencepiece vocabularies unless the file says otherwise.
        add_bos = meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")
        return cls(backend, bos_id=meta.get("tokenizer.ggml.bos_token_id"), eos_ids=_unique(eos),
                   add_bos=bool(add_bos), chat_template=meta.get("tokenizer.chat_template"), source=path)

    @classmethod
    def from_hf_dir(cls, path) -> "Tokenizer":
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json")
        config = {**_read_json(path / "special_tokens_map.json"), **config}
        if (path / "tokenizer.json").is_file():
            try:
                backend = tokenizer_service.build(lambda: HFTokenizer.from_file(str(path / "tokenizer.json")),
                                                  lambda: tokenizer_service.file_backend(path / "tokenizer.json"))
            except Exception as e:  # tokenizers raises plain Exception on malformed files
                raise ModelFormatError(path / "tokenizer.json", f"invalid tokenizer: {e}") from None
        elif (path / "tokenizer.model").is_file():
            added, special = _added_tokens(path, config)
            backend = _SentencePieceBackend(path / "tokenizer.model", added, special)
        else:
            raise ModelFormatError(path, "no tokenizer.json or tokenizer.model")

        def token_id(entry):
            text = entry.get("content") if isinstance(entry, dict) else entry
            return backend.token_to_id(text) if isinstance(text, str) else None

        def valid(i):  # ids from config files: used when they are ids of this vocabulary, else ignored
            return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < backend.get_vocab_size() else None

        generation, model_config = _read_json(path / "generation_config.json"), _read_json(path / "config.json")
        bos = token_id(config.get("bos_token"))
        if bos is None:
            bos = valid(generation.get("bos_token_id", model_config.get("bos_token_id")))
        eos = generation.get("eos_token_id", model_config.get("eos_token_id"))
        eos = [token_id(config.get("eos_token")), *map(valid, eos if isinstance(eos, list) else [eos])]
        if isinstance(backend, _SentencePieceBackend):  # the .model names its own, as LlamaTokenizer assumes
            bos = bos if bos is not None else backend.sp.bos_id()
            eos.append(backend.sp.eos_id())
        add_bos = config.get("add_bos_token")
        if add_bos is None and not isinstance(backend, _SentencePieceBackend):  # the post-processor decides
            try:
                ids = backend.encode("a", add_special_tokens=True)
                add_bos = bos is not None and getattr(ids, "ids", ids)[:1] == [bos]  # a RemoteBackend gives ids
            except Exception as e:  # e.g. a WordLevel vocabulary without its unknown token
                raise ModelFormatError(path / "tokenizer.json", f"the tokenizer cannot encode text: {e}") from None
        return cls(backend, bos_id=bos if bos is None or bos >= 0 else None, eos_ids=_unique(eos),
                   add_bos=add_bos is not False, chat_template=_hf_chat_template(path, config), source=path)

    # use ---------------------------------------------------------------------------------------
    @property
    def backend(self):
        """The `tokenizers` (or sentencepiece) object underneath, or its stand-in in the helper process
        (tokenizer_service.RemoteBackend: to_str, save, id_to_token): llguidance and MoEfication read it."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of `text`; special-token text such as "<|im_start|>" becomes its single id. With
        add_special_tokens, BOS goes in front when the model wants one (and it is not there).
        Lone surrogates (no UTF-8 spelling; they come from undecodable bytes) are encoded as U+FFFD."""
        text = _LONE_SURROGATE.sub(REPLACEMENT, text)
        try:
            if isinstance(self._backend, HFTokenizer):
                ids = self._backend.encode(text, add_special_tokens=False).ids
            else:
                ids = self._backend.encode(text)
        except Exception as e:  # the backends raise plain Exception (a vocabulary without its unknown token, ...)
            raise ModelFormatError(self.source, f"the tokenizer cannot encode this text: {e}") from None
        if add_special_tokens and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token as a person should read it on its own (probability panels, token labels): special
        tokens by name, a word's leading space kept, bytes that are not whole UTF-8 as <0xNN>."""
        token_id = int(token_id)
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self._token_text(token_id)
        return text

    def _token_text(self, token_id: int) -> str:
        piece = self._backend.id_to_token(token_id)
        if piece is None:
            return f"<unknown id {token_id}>"
        if token_id in self.special_ids:
            return piece
        text = self.decode([token_id])
        if piece.startswith("▁") and not text.startswith(" "):  # sentencepiece decoders drop a leading space
            text = " " + text
        if REPLACEMENT in text and REPLACEMENT not in piece:
            byte_of = {c: b for b, c in byte_alphabet().items()}
            if all(c in byte_of for c in piece):  # a byte-level piece holding part of a character
                return _readable_bytes(bytes(byte_of[c] for c in piece))
            return piece  # a byte-fallback piece, already spelled <0xNN>
        return text

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def is_byte_piece(self, token_id: int) -> bool:
        """A sentencepiece byte-fallback piece such as <0xE2>: one byte of a character the vocabulary lacks."""
        return BYTE_PIECE.fullmatch(self._backend.id_to_token(int(token_id)) or "") is not None

    def _name(self, token_id: int) -> str:
        return self._backend.id_to_token(token_id) if token_id in self.special_ids else self.decode([token_id])


class StreamDecoder:
    """Incremental detokenization: push ids one at a time, get back only newly completed text.

    Decoding token by token would break characters split across tokens and the spaces that
    sentencepiece decoders drop at the start of a text; instead a window starting a few tokens
    back is decoded and only its growth is emitted. Text is held back while it ends in U+FFFD (an
    unfinished character) or in a byte-fallback piece: `tokenizers` decodes a run of byte pieces
    as a whole, so one invalid byte turns the bytes before it into U+FFFD too. Everything pushed,
    then flush(), equals decode(all ids).
    """

    CONTEXT = 4  # tokens of already-emitted text kept in the window

    def __init__(self, tokenizer: Tokenizer):
        self.tok, self.ids, self.start, self.done = tokenizer, [], 0, 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        emitted = self.tok.decode(self.ids[self.start:self.done])
        window = self.tok.decode(self.ids[self.start:])
        unfinished = not final and (window.endswith(REPLACEMENT) or self.tok.is_byte_piece(self.ids[-1]))
        if unfinished or len(window) <= len(emitted):
            return ""
        # `done` only advances at whole characters and past byte runs, so `emitted` is a prefix of `window`.
        self.start, self.done = max(self.done - self.CONTEXT, 0), len(self.ids)
        return window[len(emitted):]


def _readable_bytes(data: bytes) -> str:
    """UTF-8 where it decodes, <0xNN> for each byte where it does not."""
    out = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out += [data[:e.start].decode("utf-8")] + [f"<0x{b:02X}>" for b in data[e.start:e.end]]
            data = data[e.end:]
    return "".join(out)


def _unique(ids) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None and i >= 0))


def _added_tokens(path: Path, config: dict) -> tuple[dict[str, int], set[str]]:
    """The added tokens a sentencepiece directory lists beside its .model: text -> id, and which are special."""
    decoder = config.get("added_tokens_decoder") or {}
    extra = _read_json(path / "added_tokens.json")
    entries = [(i, e.get("content"), e.get("special")) for i, e in decoder.items() if isinstance(e, dict)] \
        if isinstance(decoder, dict) else [None]
    entries += [(i, t, False) for t, i in extra.items()]
    added, special = {}, set()
    for entry in entries:
        i, text, is_special = entry or (None, None, None)
        i = int(i) if isinstance(i, str) and i.isdecimal() and len(i) < 10 else i  # JSON keys are strings
        if not isinstance(text, str) or isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 1 << 30:
            raise ModelFormatError(path / "tokenizer_config.json", "added tokens must map ids (below 2^30) to "
                                                                  "token text")
        added[text] = i
        if is_special:
            special.add(text)
    return added, special


def _hf_chat_template(path: Path, config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # some repos ship several named templates
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if template is None and (path / "chat_template.jinja").is_file():
        try:
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ModelFormatError(path / "chat_template.jinja", f"not UTF-8 text: {e}") from None
    if template is None:
        template = _read_json(path / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(path, f"invalid JSON: {e}") from None
    return data if isinstance(data, dict) else {}
