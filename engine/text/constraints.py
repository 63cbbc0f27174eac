"""Constrained decoding: a JSON schema, regular expression or grammar decides which tokens may come next.

The grammar engine is llguidance (see docs/architecture.md for why it and not xgrammar or
outlines-core). This module only adapts it: it builds llguidance's view of our vocabulary once per
tokenizer, compiles a constraint (rejecting invalid or unsatisfiable ones with a ConstraintError
before any compute is spent), and keeps one matcher per sequence that turns "what has been
generated so far" into a boolean mask over the vocabulary. The mask is applied by the sampler chain
(engine/sampling.py) as its "constraint" stage; the generation engine advances the matcher with
every accepted token and forks it with the sequence (parallel samples, beams).
"""
from __future__ import annotations

import json
import weakref

import llguidance
import numpy as np
import torch

from engine.errors import EngineError
from engine.text.tokenizer_gguf import byte_alphabet

KINDS = ("json_schema", "regex", "grammar")
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_BYTE_PIECE_PREFIX, _SP_SPACE = "<0x", "\u2581"  # sentencepiece byte-fallback pieces and its space
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # Tokenizer -> {vocab size: LLTokenizer}


class ConstraintError(EngineError):
    """A constraint that cannot be used (bad syntax, unsatisfiable schema) or that left no token to pick."""


def compile_grammar(kind: str, source: str) -> str:
    """llguidance's grammar text for a JSON schema (JSON text), a regex or a Lark / GBNF grammar.
    Raises ConstraintError naming the problem, e.g. 'minimum (5) is greater than maximum (3)'."""
    try:
        if kind == "json_schema":
            # Compact JSON (", " and ": ", no other whitespace) unless the schema's "x-guidance" says
            # otherwise: with free whitespace a small model can wander in newlines until max_new_tokens.
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.loads(source), defaults=JSON_LAYOUT)
        elif kind == "regex":
            grammar = llguidance.LLMatcher.grammar_from_regex(source)
        elif kind == "grammar":  # Lark as is; GBNF (llama.cpp's `root ::= ...`) is converted to Lark
            grammar = llguidance.grammar_from("grammar", source)
        else:
            raise ConstraintError(f"unknown constraint kind {kind!r}; one of {', '.join(KINDS)}")
    except json.JSONDecodeError as e:
        raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from None
    except ValueError as e:
        raise ConstraintError(f"invalid {kind.replace('_', ' ')}: {e}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise ConstraintError(f"invalid {kind.replace('_', ' ')}: {messages[0].strip()}")
    return grammar


def vocabulary_for(tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of our vocabulary (cached: building it walks all tokens, ~0.2 s for 49k).
    `vocab_size` is the model's logits width, which may exceed the tokenizer's (padded LM heads)."""
    per_tokenizer = _cache.setdefault(tokenizer, {})
    if vocab_size not in per_tokenizer:
        eos = list(tokenizer.eos_ids) or [0]
        backend = tokenizer.backend
        if hasattr(backend, "to_str"):  # a `tokenizers` pipeline: llguidance reads its JSON exactly
            try:
                per_tokenizer[vocab_size] = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=eos)
                return per_tokenizer[vocab_size]
            except (ValueError, RuntimeError):  # a model type it does not read (e.g. word-level): spell it out
                pass
        wrapper = _TokenBytes(tokenizer, vocab_size)
        per_tokenizer[vocab_size] = llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=eos)
    return per_tokenizer[vocab_size]


class _TokenBytes:
    """Every token's bytes, for vocabularies llguidance cannot read as tokenizer.json (sentencepiece
    models): the duck type of llguidance.TokenizerWrapper."""

    def __init__(self, tokenizer, vocab_size: int):
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_ids[0] if tokenizer.eos_ids else 0
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(i for i in tokenizer.special_ids if i < vocab_size)
        self.tokens = [token_bytes(tokenizer, i) for i in range(vocab_size)]
        self.is_tokenizer_wrapper = True

    def __call__(self, text) -> list[int]:
        return self._tokenizer.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes a token adds to the text: byte-level pieces through GPT-2's alphabet, sentencepiece
    pieces with their space marker and <0xNN> byte pieces, specials by name."""
    piece = tokenizer.backend.id_to_token(token_id)
    if piece is None:
        return b""
    if token_id in tokenizer.special_ids:
        return piece.encode()
    if tokenizer.is_byte_piece(token_id):
        return bytes([int(piece[3:-1], 16)])
    if _SP_SPACE in piece:
        return piece.replace(_SP_SPACE, " ").encode()
    alphabet = _byte_of()
    if all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return tokenizer.decode([token_id]).encode()


_byte_table: dict[str, int] = {}


def _byte_of() -> dict[str, int]:
    if not _byte_table:
        _byte_table.update({c: b for b, c in byte_alphabet().items()})
    return _byte_table


class TokenConstraint:
    """One sequence's position in a constraint: which tokens may come next, advanced token by token."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self._matcher, self.vocab_size = matcher, vocab_size

    @classmethod
    def start(cls, kind: str, source: str, tokenizer, vocab_size: int) -> "TokenConstraint":
        """Compile and check that some first token is allowed; raises ConstraintError otherwise."""
        matcher = llguidance.LLMatcher(vocabulary_for(tokenizer, vocab_size), compile_grammar(kind, source),
                                       log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"invalid {kind.replace('_', ' ')}: {matcher.get_error()}")
        constraint = cls(matcher, vocab_size)
        constraint.allowed()  # an empty first mask means nothing can ever satisfy it: say so now
        return constraint

    def allowed(self) -> torch.Tensor:
        """Bool [V]: True for every token that keeps the output valid (EOS once it may end)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool))
        if self._matcher.is_error() or not bool(mask.any()):
            raise ConstraintError("the constraint allows no next token"
                                  + (f": {self._matcher.get_error()}" if self._matcher.is_error() else
                                     " (the vocabulary cannot spell what it requires)"))
        return mask

    def advance(self, token: int) -> None:
        """Record an accepted token. A token outside the mask (e.g. a forced one) is an error."""
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"token {token} breaks the constraint: {self._matcher.get_error()}")

    def rollback(self, n_tokens: int) -> None:
        """Forget the last n accepted tokens (a rejected speculative draft)."""
        self._matcher.rollback(n_tokens)

    def fork(self) -> "TokenConstraint":
        """An independent copy at the same position, for a forked sequence."""
        return TokenConstraint(self._matcher.deep_copy(), self.vocab_size)

    @property
    def finished(self) -> bool:
        """Nothing but EOS may follow (the grammar admits no longer output)."""
        return self._matcher.is_stopped()


def draft_masks(constraint: TokenConstraint | None, drafts: list[int]) -> list[torch.Tensor | None]:
    """Speculative decoding: the mask at each of the len(drafts) + 1 verified positions, i.e. after
    drafts[:i]. The constraint is left where it was. Past a draft the constraint refuses, that draft is
    rejected (its target probability is 0) and later positions are never used: they repeat its mask."""
    if constraint is None:
        return [None] * (len(drafts) + 1)
    masks, consumed = [constraint.allowed()], 0
    for token in drafts:
        if consumed < len(masks) - 1 or constraint.finished or not bool(masks[-1][token]):
            masks.append(masks[-1])  # refused here or earlier: never reached
            continue
        constraint.advance(token)
        consumed += 1
        masks.append(constraint.allowed())
    constraint.rollback(consumed)
    return masks


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Logits with every disallowed token set to -inf (unchanged without a mask)."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))
