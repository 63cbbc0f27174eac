"""The Engine facade: load a checkpoint, turn a prompt or chat into tokens, stream generated tokens.

This is what the CLI, the GUI worker and tests call. No threads here: cancellation is a
threading.Event the caller sets, checked between tokens.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from engine.chat_template import ChatTemplate
from engine.config import ModelConfig, RopeScaling
from engine.device import pick_device, pick_dtype
from engine.errors import ContextOverflow
from engine.kv_cache import ContiguousKVCache
from engine.loaders import ProgressCallback, load_checkpoint
from engine.model import Decoder
from engine.records import GenerationDone, SamplingParams, TokenStep
from engine.sampling import filtered_logits, sample


@dataclass
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    rope_scaling: str | None = None  # e.g. "yarn:4": stretch the trained context 4x


def with_rope_override(config: ModelConfig, spec: str) -> ModelConfig:
    """Apply a 'TYPE:FACTOR' RoPE override; the usable context grows by the factor."""
    scaling = RopeScaling.parse(spec, original_max_position=config.max_seq_len)
    max_len = int(config.max_seq_len * scaling.factor) if scaling.rope_type != "default" else config.max_seq_len
    return config.replace(rope_scaling=scaling, max_seq_len=max_len)


class Engine:
    def __init__(self, model: Decoder, tokenizer, source: Path):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.source = source
        self.device = model.embed.weight.device
        template = tokenizer.chat_template
        self.chat_template = (ChatTemplate(template, tokenizer.bos_token or "", tokenizer.eos_token or "")
                              if template else ChatTemplate.default())

    @classmethod
    def load(cls, path: str | Path | None = None, options: LoadOptions | None = None,
             progress: ProgressCallback | None = None) -> "Engine":
        options = options or LoadOptions()
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        ckpt = load_checkpoint(path, dtype=dtype, progress=progress)
        config = with_rope_override(ckpt.config, options.rope_scaling) if options.rope_scaling else ckpt.config
        return cls(Decoder.from_tensors(config, ckpt.tensors, device=device, dtype=dtype), ckpt.tokenizer, ckpt.source)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """Render the model's own chat template; the template already writes BOS-like tokens."""
        return self.tokenizer.encode(self.chat_template.render(messages, add_generation_prompt=True))

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 cancel: threading.Event | None = None) -> Iterator[TokenStep | GenerationDone]:
        """Yield a TokenStep per generated token, then one GenerationDone."""
        max_len = self.config.max_seq_len
        if not prompt_ids:
            raise ContextOverflow("the prompt is empty: nothing to continue from")
        if len(prompt_ids) >= max_len:
            raise ContextOverflow(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_len}")
        cache_len = min(max_len, len(prompt_ids) + params.max_new_tokens)
        cache = ContiguousKVCache(self.config, cache_len, device=self.device, dtype=self.model.embed.weight.dtype)
        generator = torch.Generator(device="cpu")
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()

        t0 = time.perf_counter()
        tokens = torch.tensor([prompt_ids], device=self.device)
        logits = self.model(tokens, cache.view(0, len(prompt_ids)), last_only=True)[0, -1].cpu()
        prefill_ms = (time.perf_counter() - t0) * 1000
        t_decode = time.perf_counter()
        out_ids: list[int] = []
        stream = self.tokenizer.stream_decoder()
        text = ""
        reason = "length"
        pos = len(prompt_ids)
        for i in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            history = prompt_ids + out_ids if params.penalised else ()
            token = sample(logits, params, generator, history=history)
            # Greedy reports the model's own probability of its pick, not the one-hot it was chosen from.
            dist = logits if params.greedy else filtered_logits(logits, params, history=history)
            prob = float(torch.softmax(dist.float(), dim=-1)[token])
            out_ids.append(token)
            is_eos = token in self.tokenizer.eos_ids and not params.ignore_eos
            piece = "" if is_eos else stream.push(token)  # the end marker is not part of the answer
            text += piece
            yield TokenStep(i, token, piece, prob)
            if is_eos:
                reason = "eos"
                break
            if any(s in text for s in params.stop):
                reason = "stop"
                break
            if i == params.max_new_tokens - 1:
                break
            if pos >= cache_len:
                reason = "context_full"
                break
            logits = self.model(torch.tensor([[token]], device=self.device), cache.view(pos, 1))[0, -1].cpu()
            pos += 1
        decode_ms = (time.perf_counter() - t_decode) * 1000
        text += stream.flush()
        if reason == "stop":
            text = text[: min(text.find(s) for s in params.stop if s in text)]
        yield GenerationDone(text, tuple(out_ids), len(prompt_ids), reason, prefill_ms, decode_ms)
