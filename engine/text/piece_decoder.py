"""`tokenizers`' decode, computed in this process from each token's piece, for the two decoder
pipelines our vocabularies use. Used by tokenizer_service.RemoteBackend: its tokenizer lives in a
helper process, and a round trip there on every generated token (the stream decoder decodes twice per
token) cost the window's decode loop ~1.7 ms a token while the helper was woken on a busy machine.

The two pipelines, as `tokenizers` defines them:
- ByteLevel (GPT-2 lineage: SmolLM, Llama 3, Qwen): each token's piece is mapped back to bytes through
  the byte alphabet (a piece with a character outside it is taken as its own UTF-8), the bytes of all
  tokens are joined and decoded as UTF-8 with each invalid sequence replaced by one U+FFFD (Rust's
  from_utf8_lossy and Python's "replace" follow the same rule: the maximal invalid subpart).
- Sentencepiece style, Sequence[Replace("▁", " "), ByteFallback, Fuse, optional Strip(" ", 1, 0)]
  (llama.cpp "llama" vocabularies, HF Llama/Mistral tokenizer.json): "▁" becomes a space, each run of
  <0xNN> pieces becomes its bytes as UTF-8 or, when they are not valid UTF-8, one U+FFFD per byte; the
  texts are joined and one leading space is stripped.

Any other pipeline returns None from `for_pipeline` and decoding stays in the helper. Before it is
used, a PieceDecoder must reproduce the helper's decode of every token on its own (`alone`); one that
does not is not used either.
"""
from __future__ import annotations

import re

from engine.text.tokenizer_gguf import byte_alphabet

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SENTENCEPIECE = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                  {"type": "Fuse"}]
_STRIP_ONE_SPACE = {"type": "Strip", "content": " ", "start": 1, "stop": 0}


class PieceDecoder:
    """decode(ids) from a table of each token's contribution: bytes (ByteLevel) or text / a byte
    (sentencepiece style)."""

    def __init__(self, kind: str, parts: list, special: set[int], strip_space: bool = False):
        self.kind, self.parts, self.special, self.strip_space = kind, parts, frozenset(special), strip_space

    @classmethod
    def for_pipeline(cls, decoder: dict | None, pieces: list[str | None], alone: list[str],
                     special: set[int]) -> "PieceDecoder | None":
        """The local decoder for `decoder` (the pipeline's JSON, as tokenizer.json spells it), checked
        against `alone` (the helper's decode of each id on its own); None when there is none."""
        if not isinstance(decoder, dict) or any(p is None for p in pieces):
            return None
        if decoder.get("type") == "ByteLevel":
            local = cls._byte_level(pieces, special)
        elif decoder.get("type") == "Sequence" and _is_sentencepiece(decoder.get("decoders")):
            local = cls._sentencepiece(pieces, special, strip_space=len(decoder["decoders"]) == 4)
        else:
            return None
        # Every token on its own must come out as the helper's does, or the local tables are wrong.
        return local if all(local.decode([i]) == text for i, text in enumerate(alone)) else None

    @classmethod
    def _byte_level(cls, pieces, special):
        byte_of = {c: b for b, c in byte_alphabet().items()}

        def contribution(piece: str) -> bytes:
            try:
                return bytes(byte_of[c] for c in piece)
            except KeyError:  # e.g. an added token in plain UTF-8: `tokenizers` keeps its own bytes
                return piece.encode()

        return cls("byte_level", [contribution(p) for p in pieces], special)

    @classmethod
    def _sentencepiece(cls, pieces, special, strip_space):
        def contribution(piece: str) -> str | int:
            match = _BYTE_PIECE.fullmatch(piece)
            return int(match.group(1), 16) if match else piece.replace("▁", " ")

        return cls("sentencepiece", [contribution(p) for p in pieces], special, strip_space)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special]
        if self.kind == "byte_level":
            return b"".join([self.parts[i] for i in ids]).decode("utf-8", "replace")
        texts, run = [], bytearray()
        for i in ids:
            part = self.parts[i]
            if isinstance(part, int):
                run.append(part)
                continue
            if run:
                texts.append(_byte_run(run))
                run = bytearray()
            texts.append(part)
        if run:
            texts.append(_byte_run(run))
        text = "".join(texts)
        return text[1:] if self.strip_space and text.startswith(" ") else text


def _byte_run(run: bytearray) -> str:
    """ByteFallback: a run of byte pieces is its UTF-8 text, or one U+FFFD per byte when it is not valid."""
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


def _is_sentencepiece(decoders) -> bool:
    return isinstance(decoders, list) and (decoders == _SENTENCEPIECE or decoders == [*_SENTENCEPIECE,
                                                                                       _STRIP_ONE_SPACE])
