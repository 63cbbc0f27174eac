"""Drafters for speculative decoding (engine/runtime/speculative.py): cheap guesses of the next k tokens.

- `NgramDrafter`: prompt lookup. The continuation of the most recent earlier occurrence of the
  context's last n tokens (longest n first). No model; its proposals are deterministic.
- `ModelDrafter`: any Decoder sharing the target's tokenizer, run autoregressively over its own paged
  KV cache: a smaller model of the same family, the target quantized to int4 ("self-int4"), or the
  target's first L layers with its final norm and LM head ("self-layers:L").

A drafter samples through the same sampler chain as the target and reports the distribution each
token was drawn from, which is what exact acceptance needs. Its cache is rolled back to the
accepted prefix after every verification (`rollback`), and released with its sequence (`release`).
Shape legend: T tokens, V the target's vocabulary.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.runtime.block_manager import BlockManager, BlockTable
from engine.runtime.kv_pool import KVPool
from engine.sampling import draw, next_token, run_chain


DRAFT_MAX_TOKENS = 32768  # a model drafter's KV pool holds at most this many tokens


@dataclass
class Proposal:
    tokens: list[int]
    q: torch.Tensor | None  # [k, V] the distribution each token was drawn from; None = deterministic (one-hot)


def forward_tokens(model, pool: KVPool, blocks: BlockManager, table: BlockTable, tokens: list[int],
                   last_only: bool = False) -> torch.Tensor:
    """Append `tokens` to one sequence's paged cache and run them: logits [T, V] (or [1, V] with last_only)."""
    start = table.num_tokens
    slots, copies = blocks.append(table, tokens)
    pool.copy_blocks(copies)
    view = pool.view([list(range(start, start + len(tokens)))], slots, [table.block_ids], [table.num_tokens])
    ids = torch.tensor([tokens], device=pool.k.device)
    return model(ids, view, last_only=last_only)[0]


class NgramDrafter:
    """Prompt lookup decoding (Saxena 2023): inputs that get summarised, rewritten or quoted repeat."""

    # min_n 2: a single shared token proposes junk as often as not (measured on open chat: 9% of such drafts
    # were kept, against 69% with min_n 2), and every junk draft widens the target's forward for nothing.
    def __init__(self, max_n: int = 5, min_n: int = 2):
        self.name, self.max_n, self.min_n = "ngram", max_n, min_n

    def propose(self, state, context: list[int], k: int, params, histories, generator) -> Proposal:
        return Proposal(lookup(context, k, self.max_n, self.min_n), None)

    def rollback(self, state, length: int) -> None:
        pass  # no cache

    def release(self, state) -> None:
        pass


def lookup(context: list[int], k: int, max_n: int = 5, min_n: int = 2) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the context's last n tokens."""
    size = len(context)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        pattern = context[size - n:]
        last = pattern[-1]
        for start in range(size - n - 1, -1, -1):  # newest first: recent text predicts best
            if context[start + n - 1] == last and context[start:start + n] == pattern:
                return context[start + n:start + n + k]
    return []


class ModelDrafter:
    """A draft model with its own KV pool; one BlockTable per sequence lives in the caller's state."""

    def __init__(self, name: str, model, vocab_size: int, num_blocks: int, block_size: int, prefill_chunk: int = 512):
        self.name, self.model, self.vocab_size, self.prefill_chunk = name, model, vocab_size, prefill_chunk
        weight = model.embed.weight
        self.pool = KVPool(model.config, num_blocks, block_size, weight.device, weight.dtype)
        self.blocks = BlockManager(num_blocks, block_size)

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft logits over the target's vocabulary: ids the draft lacks get -inf, extra ids are cut."""
        logits = logits.float().cpu()
        V = self.vocab_size
        if logits.shape[-1] >= V:
            return logits[..., :V]
        return torch.cat([logits, torch.full((*logits.shape[:-1], V - logits.shape[-1]), float("-inf"))], -1)

    def _catch_up(self, state, context: list[int]) -> torch.Tensor:
        """Bring the draft cache to `context` minus its last token, run that token, return its logits [V]."""
        if state.draft_table is None:
            state.draft_table = self.blocks.match_prefix(context)  # prompt blocks other sequences computed
        table = state.draft_table
        common = next((i for i, (a, b) in enumerate(zip(table.tokens, context)) if a != b),
                      min(table.num_tokens, len(context)))
        self.blocks.truncate(table, min(common, len(context) - 1))
        rest = context[table.num_tokens:]
        for start in range(0, len(rest), self.prefill_chunk):
            logits = forward_tokens(self.model, self.pool, self.blocks, table, rest[start:start + self.prefill_chunk],
                                    last_only=True)
        return self._fit(logits[-1])

    def propose(self, state, context: list[int], k: int, params, histories, generator) -> Proposal:
        """Draft k tokens after `context` (its last token is the target's pending one). `histories(i)`
        is the penalty history for drafted position i."""
        logits = self._catch_up(state, context)
        tokens, qs = [], []
        for i in range(k):
            if params.greedy:
                token = int(next_token(logits, params, history=histories(i, tokens)))
            else:
                q = run_chain(logits, params, histories(i, tokens)).probs
                token = int(draw(q, generator))
                qs.append(q)
            tokens.append(token)
            if i < k - 1:  # the last drafted token needs no logits of its own
                logits = self._fit(forward_tokens(self.model, self.pool, self.blocks, state.draft_table, [token])[-1])
        return Proposal(tokens, torch.stack(qs) if qs else None)

    def rollback(self, state, length: int) -> None:
        """Forget drafted tokens past the first `length` committed ones (blocks wholly past it are freed)."""
        table = state.draft_table
        if table is not None and table.num_tokens > length:
            self.blocks.truncate(table, length)

    def release(self, state) -> None:
        if state.draft_table is not None:
            self.blocks.release(state.draft_table)
            state.draft_table = None


def layer_skip_model(target, n_layers: int):
    """The target's first n_layers blocks with its own final norm and LM head, sharing every weight
    (LayerSkip-style self-draft, Elhoushi et al. 2024). Early layers already rank likely tokens well."""
    from engine.model import Decoder

    config = target.config
    if not 1 <= n_layers < config.n_layers:
        raise ValueError(f"self-layers:L needs 1 <= L < {config.n_layers} (the target's layers), got {n_layers}")
    draft = Decoder.__new__(Decoder)
    nn.Module.__init__(draft)
    draft.config = config.first_layers(n_layers)
    draft.embed, draft.norm, draft.lm_head, draft.rope = target.embed, target.norm, target.lm_head, target.rope
    draft.layers = nn.ModuleList(list(target.layers[:n_layers]))
    return draft.eval()


def self_int4_model(target, mode: str = "int4-g32"):
    """A copy of the target with every linear quantized to int4 (engine/quant)."""
    try:
        from engine.quant import quantize_model
    except ImportError as e:  # the quantization module is another piece of work
        raise NotImplementedError("self-int4 needs engine.quant.quantize_model, which is not available") from e
    return quantize_model(copy.deepcopy(target), mode)


def load_draft_model(path: str, target, tokenizer):
    """A draft model from a file, on the target's device and dtype; its vocabulary must be the target's."""
    from engine.loaders import load_checkpoint
    from engine.quant import build_model

    weight = target.embed.weight
    keep_packed = weight.device.type == "cpu"
    ckpt = load_checkpoint(Path(path), dtype=weight.dtype, keep_packed=keep_packed)
    n = min(tokenizer.vocab_size, ckpt.tokenizer.vocab_size)
    mismatch = next((i for i in range(n) if tokenizer.token_text(i) != ckpt.tokenizer.token_text(i)), None)
    if mismatch is not None:
        raise ValueError(f"the draft model {path} does not share the target's tokenizer (token {mismatch}: "
                         f"{ckpt.tokenizer.token_text(mismatch)!r} vs {tokenizer.token_text(mismatch)!r})")
    return build_model(ckpt.config, ckpt.tensors, weight.device, weight.dtype, "auto" if keep_packed else "none")


def build_drafter(name: str, target, tokenizer, block_size: int, target_blocks: int):
    """'ngram' | 'self-layers:L' | 'self-int4' | a model path -> a drafter over `target` (the loaded Decoder).
    Called by the facade (engine/engine.py) when a request names a drafter, never inside a step."""
    V = target.config.vocab_size
    # As many blocks as the target, up to 32k tokens: on a GPU the target's pool takes a share of free memory
    # that a second pool of the same size would not find (measured: out of memory on an 80 GB H100).
    blocks = (min(target_blocks, max(1, DRAFT_MAX_TOKENS // block_size)), block_size)
    if name == "ngram":
        return NgramDrafter()
    if name.startswith("self-layers:"):
        n = name.removeprefix("self-layers:")
        if not n.isdigit():
            raise ValueError(f"self-layers:L needs a layer count, got {name!r}")
        return ModelDrafter(name, layer_skip_model(target, int(n)), V, *blocks)
    if name == "self-int4":
        return ModelDrafter(name, self_int4_model(target), V, *blocks)
    if not Path(name).exists():
        raise ValueError(f"unknown drafter {name!r}: use ngram, self-int4, self-layers:L or a model path")
    return ModelDrafter(name, load_draft_model(name, target, tokenizer), V, *blocks)
