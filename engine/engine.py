"""The Engine facade: load a checkpoint, turn a prompt or chat into tokens, stream generated tokens.

This is what the CLI, the GUI worker and tests call. No threads here: cancellation is a
threading.Event the caller sets, checked between tokens.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from engine.chat_template import ChatTemplate
from engine.config import ModelConfig, RopeScaling
from engine.device import pick_device, pick_dtype
from engine.errors import ContextOverflow, EngineError
from engine.generation import GenerationEngine
from engine.loaders import ProgressCallback, load_checkpoint
from engine.model import Decoder
from engine.quality import compare
from engine.quant import build_model, check_mode
from engine.records import GenerationDone, GenerationRequest, QuantDiff, RequestDone, SamplingParams, StepRecord, TokenStep
from engine.records import SpeculativeOptions


@dataclass
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    rope_scaling: str | None = None  # e.g. "yarn:4": stretch the trained context 4x
    kv_budget_gib: float = 0.5  # CPU: the KV pool's size; CUDA: ignored in favour of kv_gpu_fraction
    kv_gpu_fraction: float = 0.3  # CUDA: share of free GPU memory the KV pool takes after loading
    kv_block_size: int = 16
    context_length: int = 0  # 0 = the model's own (times the RoPE override's factor); else this many tokens
    # engine/quant: auto keeps a GGUF's Q8_0/Q4_0/Q4_1 weights packed on the CPU (float elsewhere);
    # none = all float; int8 / int4-gN quantize every linear at load time.
    quant: str = "auto"
    quant_head: bool = True  # quantize the LM head and embedding too
    quant_exact: bool = False  # CPU fp32: feed quantized matmuls fp32 (exact, slow) instead of bf16
    # MoE on a GPU too small for every expert: experts stay in CPU memory, the used ones are copied
    # per step (engine/moe_offload.py). Float weights only.
    expert_offload: bool = False


def with_rope_override(config: ModelConfig, spec: str) -> ModelConfig:
    """Apply a 'TYPE:FACTOR' RoPE override; the usable context grows by the factor."""
    scaling = RopeScaling.parse(spec, original_max_position=config.max_seq_len)
    max_len = int(config.max_seq_len * scaling.factor) if scaling.rope_type != "default" else config.max_seq_len
    return config.replace(rope_scaling=scaling, max_seq_len=max_len)


class Engine:
    def __init__(self, model: Decoder, tokenizer, source: Path, options: LoadOptions | None = None):
        options = options or LoadOptions()
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.source = source
        self.device = model.embed.weight.device
        self.chat_template = ChatTemplate.of(tokenizer)
        if self.device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(self.device)[0] * options.kv_gpu_fraction)
        else:
            budget = int(options.kv_budget_gib * (1 << 30))
        self.runner = GenerationEngine(model, tokenizer, budget, options.kv_block_size)
        self._float_reference = None  # loaded by quant_diff on first use

    @classmethod
    def load(cls, path: str | Path | None = None, options: LoadOptions | None = None,
             progress: ProgressCallback | None = None) -> "Engine":
        options = options or LoadOptions()
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        check_mode(options.quant)
        # Packed GGUF kernels are CPU ones; on a GPU the file is dequantized (or re-quantized by mode).
        keep_packed = options.quant == "auto" and device.type == "cpu"
        ckpt = load_checkpoint(path, dtype=dtype, progress=progress, keep_packed=keep_packed)
        config = with_rope_override(ckpt.config, options.rope_scaling) if options.rope_scaling else ckpt.config
        if options.context_length:
            config = config.replace(max_seq_len=options.context_length)
        if options.expert_offload and config.moe is not None:
            from engine.moe_offload import offload_experts

            model = build_model(config, ckpt.tensors, torch.device("cpu"), dtype, "none")
            offload_experts(model, device)
        else:
            model = build_model(config, ckpt.tensors, device, dtype, options.quant, head=options.quant_head,
                                exact=options.quant_exact)
        return cls(model, ckpt.tokenizer, ckpt.source, options)

    def quant_diff(self, ids: list[int]) -> QuantDiff:
        """What this engine's quantization changed on `ids` (e.g. the conversation so far): per-token
        KL divergence and top-1 agreement against the same checkpoint in float. The float model
        is loaded on first use and kept (it costs the float weights' memory)."""
        if self._float_reference is None:
            dtype = self.model.embed.weight.dtype
            ckpt = load_checkpoint(self.source, dtype=dtype)
            self._float_reference = build_model(self.config, ckpt.tensors, self.device, dtype, "none")
        if len(ids) < 2:
            return QuantDiff((), (), 0.0, 1.0)  # nothing is predicted from fewer than two tokens
        window = min(len(ids), self.config.max_seq_len, 1024)
        return compare(self._float_reference, self.model, list(ids), window=window, stride=max(1, window // 2))

    def chat_prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Render the model's own chat template; the template already writes BOS-like tokens. `tools`
        (JSON-schema function specs, engine/tools.py) reach templates that offer them to the model."""
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.encode(self.chat_template.render(messages, add_generation_prompt=True, **extra))

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def make_request(self, prompt: str | list[dict] | list[int], params: SamplingParams, **options) -> GenerationRequest:
        """A request from raw text (continued as is), chat messages (templated) or token ids.
        `options` are GenerationRequest's: n, best_of, beams, instrument. Submit it to `self.runner`."""
        if isinstance(prompt, str):
            ids = self.prompt_ids(prompt)
        elif prompt and isinstance(prompt[0], dict):
            ids = self.chat_prompt_ids(prompt)
        else:
            ids = list(prompt)
        return GenerationRequest(tuple(ids), params, **options)

    def generate(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 speculative: SpeculativeOptions | None = None) -> Iterator[TokenStep | GenerationDone]:
        """Yield a TokenStep per generated token, then one GenerationDone (single request, one sample).
        With speculative decoding, GenerationDone.stats["speculative"] is the last step's SpecStep."""
        max_len = self.config.max_seq_len
        if not prompt_ids:
            raise ContextOverflow("the prompt is empty: nothing to continue from")
        if len(prompt_ids) >= max_len:
            raise ContextOverflow(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_len}")
        rid = self.runner.submit(GenerationRequest(tuple(prompt_ids), params,
                                                   speculative=speculative or SpeculativeOptions()))
        stats: dict = {}
        while True:
            if cancel is not None and cancel.is_set():
                self.runner.cancel(rid)
            for item in self.runner.step():
                if isinstance(item, StepRecord) and item.request_id == rid:
                    if item.spec is not None:
                        stats["speculative"] = item.spec
                    yield TokenStep(item.index, item.token_id, item.text, item.prob)
                elif isinstance(item, RequestDone) and item.request_id == rid:
                    if item.error:
                        raise EngineError(item.error)
                    result = item.results[0]
                    text = result.text
                    if result.finish_reason == "stop":  # the answer ends before the stop string
                        text = text[: min(text.find(s) for s in params.stop if s in text)]
                    yield GenerationDone(text, result.token_ids, item.prompt_tokens, result.finish_reason,
                                         item.prefill_ms, item.decode_ms, stats)
                    return
