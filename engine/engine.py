"""The Engine facade: load a checkpoint, turn a prompt or chat into tokens, and own the generation
loop (submit / step / cancel / stream) over the paged runner (engine/runtime/runner.py).

This is what the CLI, the window's worker thread and scripts call; the runner stays private. Drafters
for speculative decoding are built here when a request is submitted, never inside a step. No threads
here: cancellation is a threading.Event the caller sets, checked between steps.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Iterator

import torch

from engine.config import ModelConfig, RopeScaling
from engine.device import freeze_heap, give_back_memory, pick_device, pick_dtype, set_threads
from engine.errors import ContextOverflow, EngineError
from engine.instrumentation.adapter_compare import adapter_comparison
from engine.instrumentation.distribution import distribution_view
from engine.instrumentation.drift import load_float_reference, quant_drift, require_quantized, scoring_window
from engine.instrumentation.interventions import as_loaded, check_interventions, install_interventions
from engine.instrumentation.lens import intervene, logit_lens
from engine.instrumentation.quality import compare
from engine.instrumentation.replay import replay_attention
from engine.instrumentation.rope_view import rope_view
from engine.layers.lora import adapter_stack, checked_scale
from engine.loaders import ProgressCallback, load_checkpoint
from engine.loaders.lora_adapter import read_adapter
from engine.model import Decoder
from engine.quant import build_model, check_mode
from engine.records import (AdapterComparisonView, AdapterFacts, AttentionView, DistributionView, GenerationDone,
                            GenerationRequest, Intervention,
                            InterventionView, LoadOptions, LogitLensView, MemorySnapshot, ModelFacts, PromptRecord,
                            QuantDiff, QuantDriftView, RequestDone, RopeView, SamplingParams, SpeculativeOptions,
                            StepRecord, TokenStep)
from engine.runtime.drafters import build_drafter
from engine.runtime.runner import Runner
from engine.text.builtin_templates import (BUILTIN_TEMPLATES, completion_text, fallback_template,
                                           fallback_template_with_note)
from engine.text.chat_template import ChatTemplate
from engine.text.tools import template_supports_tools

Record = StepRecord | RequestDone


def with_rope_override(config: ModelConfig, spec: str) -> ModelConfig:
    """Apply a 'TYPE:FACTOR' RoPE override; the usable context grows by the factor."""
    scaling = RopeScaling.parse(spec, original_max_position=config.max_seq_len)
    max_len = int(config.max_seq_len * scaling.factor) if scaling.rope_type != "default" else config.max_seq_len
    return config.replace(rope_scaling=scaling, max_seq_len=max_len)


class Engine:
    def __init__(self, model: Decoder, tokenizer, source: Path, options: LoadOptions | None = None,
                 num_blocks: int | None = None):
        options = options or LoadOptions()
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.source = Path(source)
        self.device = model.embed.weight.device
        self.chat_template = ChatTemplate.of(tokenizer, fallback_template(model.config.arch))
        if self.device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(self.device)[0] * options.kv_gpu_fraction)
        else:
            budget = int(options.kv_budget_gib * (1 << 30))
        self._runner = Runner(model, tokenizer, budget, options.kv_block_size, num_blocks=num_blocks)
        self._drafters: dict = {}  # speculative decoding: drafter name -> drafter, built on first use and kept
        self._float_reference = None  # loaded by quant_diff / quant_drift on first use
        # the checkpoint's own config, before a RoPE or context override (Engine.load sets it): the RoPE
        # view applies the model panel's choice to it, as a reload would
        self._checkpoint_config = model.config
        self._interventions = None  # installed by set_interventions: a handle with .interventions and .remove()

    @classmethod
    def load(cls, path: str | Path | None = None, options: LoadOptions | None = None,
             progress: ProgressCallback | None = None) -> "Engine":
        options = options or LoadOptions()
        # Off the main thread (the window's worker) a GUI thread shares our GIL and our cores: keep the
        # collector's full passes short (loading allocates enough to trigger one) and build the tokenizer
        # out of process (engine/text/tokenizer_service.py). The engine's thread keeps its priority: the
        # window paces its redraws instead (app/record_hub.py), and a lower nice lost the CPU to every
        # other process on the machine, not just to the GUI.
        beside_gui = threading.current_thread() is not threading.main_thread()
        if beside_gui:
            freeze_heap()
        if options.threads is not None:
            set_threads(options.threads)  # on the thread that will run the engine: OpenMP counts per thread
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
            from engine.runtime.moe_offload import offload_experts

            model = build_model(config, ckpt.tensors, torch.device("cpu"), dtype, "none")
            offload_experts(model, device)
        else:
            model = build_model(config, ckpt.tensors, device, dtype, options.quant, head=options.quant_head,
                                exact=options.quant_exact)
        engine = cls(model, ckpt.tokenizer, ckpt.source, options)
        engine._checkpoint_config = ckpt.config
        for folder, scale in options.adapters:
            engine.add_adapter(folder, scale)
        if beside_gui:
            freeze_heap()  # the model's own objects too: passes while chatting walk only the records
        return engine

    # -- what was loaded ----------------------------------------------------------------------
    def facts(self) -> ModelFacts:
        c = self.config
        quantized = {id(w): w for m in self.model.modules() for w in getattr(m, "quant_weights", lambda: [])()}
        parameters = sum(p.numel() for p in self.model.parameters()) + sum(
            math.prod(w.shape) for w in quantized.values())  # packed weights are not Parameters
        weights = sorted(self.model.weight_bytes().items(), key=lambda kv: -kv[1])
        dense = tuple(i for i, moe in enumerate(c.moe_layers) if not moe) if c.moe else ()
        return ModelFacts(
            name=self.source.name, path=str(self.source), architecture=c.arch, parameters=parameters,
            layers=c.n_layers, heads=c.n_heads, kv_heads=c.n_kv_heads, head_dim=c.head_dim,
            experts=c.moe.n_experts if c.moe else 0, experts_per_token=c.moe.n_experts_per_tok if c.moe else 0,
            dense_layers=dense, context=c.max_seq_len, vocab=c.vocab_size,
            dtype=str(self.model.embed.weight.dtype).removeprefix("torch."), device=str(self.device),
            rope=c.rope_scaling.rope_type, weight_bytes=tuple(weights),
            supports_tools=template_supports_tools(self.chat_template.source),
            expert_groups=c.moe.n_group if c.moe else 1,
            expert_groups_kept=c.moe.topk_group if c.moe and c.moe.n_group > 1 else 0,
            kv_latent=c.mla.kv_lora_rank + c.mla.qk_rope_head_dim if c.mla else 0,
            sliding_windows=tuple(c.sliding_windows))

    def memory(self) -> MemorySnapshot:
        return self._runner.memory()

    @property
    def kv_blocks_in_use(self) -> int:
        """KV blocks held by live sequences (0 when nothing runs: every request released its blocks)."""
        return self._runner.blocks.stats().used

    @property
    def counters(self) -> tuple[int, int]:
        """(tokens run through the model, forward passes) so far: prefix-cache hits are not run."""
        return self._runner.tokens_computed, self._runner.forward_calls

    # -- text ---------------------------------------------------------------------------------
    def chat_prompt_ids(self, messages: list[dict], tools: list[dict] | None = None,
                        template: str | None = None) -> list[int]:
        """Render the model's own chat template, or `template` (a jinja source: a built-in one or the
        user's) in the same sandbox; the template already writes BOS-like tokens. `tools` (JSON-schema
        function specs, engine/text/tools.py) reach templates that offer them to the model."""
        extra = {"tools": tools} if tools else {}
        chat_template = self.chat_template if template is None else ChatTemplate.compiled(
            template, self.tokenizer.bos_token or "", self.tokenizer.eos_token or "")
        return self.tokenizer.encode(chat_template.render(messages, add_generation_prompt=True, **extra))

    def completion_prompt_ids(self, text: str | list[dict]) -> list[int]:
        """Plain completion, no template: the BOS the model expects (if any), then the text's own tokens.
        Chat messages become the text completion mode continues (builtin_templates.completion_text: every
        message's content but the system prompt's, run together as they are)."""
        text = text if isinstance(text, str) else completion_text(text)
        return self.tokenizer.encode(text, add_special_tokens=True)

    def template_source(self) -> str:
        """The model's own chat template, or (it ships none) a note and the source used instead (ChatML;
        the Gemma format for Gemma models)."""
        return self.tokenizer.chat_template or fallback_template_with_note(self.config.arch)

    @staticmethod
    def builtin_templates() -> dict[str, str]:
        """The templates offered besides the model's own: name -> jinja source (ChatML, Llama 3, Gemma, none)."""
        return dict(BUILTIN_TEMPLATES)

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def token_texts(self, ids) -> tuple[str, ...]:
        """Each token's display text (what the panels label tokens with)."""
        return tuple(self.tokenizer.token_text(int(t)) for t in ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def make_request(self, prompt: str | list[dict] | list[int], params: SamplingParams, **options) -> GenerationRequest:
        """A request from raw text (continued as is), chat messages (templated) or token ids.
        `options` are GenerationRequest's: n, best_of, beams, instrument, speculative."""
        if isinstance(prompt, str):
            ids = self.prompt_ids(prompt)
        elif prompt and isinstance(prompt[0], dict):
            ids = self.chat_prompt_ids(prompt)
        else:
            ids = list(prompt)
        return GenerationRequest(tuple(ids), params, **options)

    # -- the generation loop ------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; its records come out of step(). A drafter it names is built now (a bad
        drafter fails this request at its first step, with the reason)."""
        drafter, problem = None, None
        if request.speculative.enabled:
            try:
                drafter = self._drafter(request.speculative.drafter)
            except (ValueError, OSError, NotImplementedError, EngineError) as e:
                problem = f"speculative decoding: {e}"
        return self._runner.submit(request, drafter=drafter, rejection=problem)

    def step(self) -> list[Record]:
        """One scheduling step over every request in flight: StepRecords and RequestDones, in order."""
        return self._runner.step()

    def cancel(self, request_id: int) -> None:
        """Stop a request at the next step; its blocks are freed and a RequestDone says 'cancelled'."""
        self._runner.cancel(request_id)

    def has_work(self) -> bool:
        return self._runner.has_work()

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None
               ) -> Iterator[PromptRecord | StepRecord | RequestDone]:
        """Submit `request` and step until it is done: a PromptRecord first, then its StepRecords, then its
        RequestDone. The one loop the CLI, the window's worker and generate() share. Other requests in
        flight advance too; only this request's records are yielded."""
        rid = self.submit(request)
        yield PromptRecord(rid, tuple(request.prompt_ids), self.token_texts(request.prompt_ids))
        while True:
            if cancel is not None and cancel.is_set():
                self.cancel(rid)
            for item in self.step():
                if item.request_id != rid:
                    continue
                yield item
                if isinstance(item, RequestDone):
                    return

    def generate(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 speculative: SpeculativeOptions | None = None) -> Iterator[TokenStep | GenerationDone]:
        """Yield a TokenStep per generated token, then one GenerationDone (single request, one sample).
        With speculative decoding, GenerationDone.stats["speculative"] is the last step's SpecStep."""
        max_len = self.config.max_seq_len
        if not prompt_ids:
            raise ContextOverflow("the prompt is empty: nothing to continue from")
        if len(prompt_ids) >= max_len:
            raise ContextOverflow(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_len}")
        request = GenerationRequest(tuple(prompt_ids), params, speculative=speculative or SpeculativeOptions())
        stats: dict = {}
        for item in self.stream(request, cancel):
            if isinstance(item, StepRecord):
                if item.spec is not None:
                    stats["speculative"] = item.spec
                yield TokenStep(item.index, item.token_id, item.text, item.prob)
            elif isinstance(item, RequestDone):
                if item.error:
                    raise EngineError(item.error)
                result = item.results[0]
                text = result.text
                if result.finish_reason == "stop":  # the answer ends before the stop string
                    text = text[: min(text.find(s) for s in params.stop if s in text)]
                yield GenerationDone(text, result.token_ids, item.prompt_tokens, result.finish_reason,
                                     item.prefill_ms, item.decode_ms, stats)

    def prepare_drafter(self, name: str) -> None:
        """Build the drafter `name` now (a draft model loads, self-int4 quantizes a copy) rather than at the
        first request that names it; raises ValueError / OSError for a drafter that cannot be built."""
        self._drafter(name)

    def register_drafter(self, name: str, drafter) -> None:
        """Use `drafter` (propose / rollback / release, engine/runtime/drafters.py) for requests naming `name`."""
        self._drafters[name] = drafter

    def draft_blocks_in_use(self) -> int:
        """KV blocks the drafters' own caches hold (0 when no speculative request runs)."""
        return sum(d.blocks.stats().used for d in self._drafters.values() if getattr(d, "blocks", None) is not None)

    def _drafter(self, name: str):
        if name not in self._drafters:
            pool = self._runner.blocks
            self._drafters[name] = build_drafter(name, self.model, self.tokenizer, pool.block_size, pool.num_blocks)
        return self._drafters[name]

    # -- inspection, computed when someone looks ----------------------------------------------
    def distribution(self, record: StepRecord, params: SamplingParams, top_n: int = 12,
                     history=()) -> DistributionView:
        """The step's next-token distribution through every sampler stage under `params`, re-derived from
        the logits the record stored: no forward pass. `history` is what the penalties look at, as the
        runner passes it: the prompt ids and the tokens generated before this step."""
        return distribution_view(record, params, self.tokenizer.token_text, top_n=top_n, history=history)

    def attention(self, token_ids, layer: int, queries: tuple[int, int], cancelled=lambda: False
                  ) -> AttentionView | None:
        """Layer `layer`'s attention for query positions [queries[0], queries[1]) of `token_ids` (a
        conversation so far), by replay up to that layer: nothing is captured while generating. None when
        `cancelled()` turns true first."""
        return replay_attention(self.model, list(token_ids), layer, queries, cancelled)

    def quant_diff(self, ids: list[int]) -> QuantDiff:
        """What this engine's quantization changed on `ids` (e.g. the conversation so far): per-token
        KL divergence and top-1 agreement against the same checkpoint in float. The float model
        is loaded on first use and kept (it costs the float weights' memory)."""
        if self._float_reference is None:
            self._float_reference = load_float_reference(self.source, self.config, self.model)
        if len(ids) < 2:
            return QuantDiff((), (), 0.0, 1.0)  # nothing is predicted from fewer than two tokens
        window, stride = scoring_window(len(ids), self.config.max_seq_len)
        # against the model as loaded: not interventions kept on for generation, nor LoRA adapters (the float
        # reference has none: quantization alone is measured)
        with as_loaded(self.model), adapter_stack(self.model).suspended():
            return compare(self._float_reference, self.model, list(ids), window=window, stride=stride)

    # -- the model's own what-if (engine/instrumentation/lens.py, interventions.py) ---------------------
    def logit_lens(self, context_ids, target_id: int, columns: int = 8, top_n: int = 5,
                   interventions: tuple[Intervention, ...] = (), cancelled=lambda: False) -> LogitLensView | None:
        """Every layer's next-token prediction (residual after each block, through the final norm and the LM
        head) at the last `columns` positions of `context_ids`, by replay; the last column predicted
        `target_id`. With `interventions` they apply during the replay only. None when cancelled."""
        return logit_lens(self.model, list(context_ids), target_id, self.tokenizer.token_text, columns, top_n,
                          tuple(interventions), cancelled)

    def intervene(self, context_ids, target_id: int, interventions: tuple[Intervention, ...], top_n: int = 10,
                  columns: int = 8, cancelled=lambda: False) -> InterventionView | None:
        """The next-token distribution after `context_ids` with `interventions` against the model as
        loaded (KL, top-1), and the logit lens under them; by replay, the live model untouched."""
        return intervene(self.model, list(context_ids), target_id, self.tokenizer.token_text,
                         tuple(interventions), top_n, columns, cancelled)

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions generation runs with (set_interventions); empty: the model as loaded."""
        return self._interventions.interventions if self._interventions is not None else ()

    def set_interventions(self, interventions: tuple[Intervention, ...]) -> None:
        """Generate with `interventions` applied (empty: none). Cached prefixes were computed by the other
        model, so the prefix cache is dropped whenever the set changes."""
        interventions = tuple(interventions)
        if interventions == self.interventions:
            return
        check_interventions(self.model, interventions)  # a bad set is refused before the old one comes off
        if self._interventions is not None:
            self._interventions.remove()
            self._interventions = None
        if interventions:
            self._interventions = install_interventions(self.model, interventions)
        self._forget_prefixes()

    def _forget_prefixes(self) -> None:
        """The model now computes other K/V (interventions, adapters): no cached prefix may be reused."""
        self._runner.drop_prefix_cache()
        for drafter in self._drafters.values():  # a drafter made of this model's layers drafted with the old one
            if getattr(drafter, "blocks", None) is not None:
                drafter.blocks.forget_prefixes()

    # -- LoRA adapters beside the weights (engine/layers/lora.py, engine/loaders/lora_adapter.py) -----
    def add_adapter(self, path: str | Path, scale: float = 1.0, enabled: bool = True) -> AdapterFacts:
        """Load the PEFT LoRA adapter in folder `path` onto the model, beside its weights (quantized ones
        stay quantized); named after the folder. ModelFormatError for a bad adapter: the model is untouched."""
        scale = checked_scale(scale)
        stack = adapter_stack(self.model)
        same = next((a.name for a in stack.adapters.values() if Path(a.path).resolve() == Path(path).resolve()), None)
        if same is not None:  # loading it twice would silently double its effect
            raise ValueError(f"{path} is already loaded as {same!r}: change its scale instead")
        name = base = Path(path).name or "adapter"
        n = 1
        while name in stack.adapters:
            n += 1
            name = f"{base}-{n}"
        adapter = read_adapter(path, self.model, name)
        adapter.scale, adapter.enabled = scale, bool(enabled)
        stack.add(adapter)
        if adapter.enabled:
            self._forget_prefixes()
        return _adapter_facts(adapter)

    def set_adapter(self, name: str, enabled: bool | None = None, scale: float | None = None) -> AdapterFacts:
        """Switch adapter `name` on or off and/or set its scale, live (the base model is not reloaded; the
        prefix cache is dropped). ValueError for a name not loaded or a scale that is not a finite number."""
        stack = adapter_stack(self.model)
        before = stack.adapters.get(name)
        before = (before.enabled, before.scale) if before is not None else None
        adapter = stack.configure(name, enabled, scale)
        if before != (adapter.enabled, adapter.scale) and (adapter.enabled or before[0]):
            self._forget_prefixes()
        return _adapter_facts(adapter)

    def remove_adapter(self, name: str) -> None:
        """Unload adapter `name` (ValueError if it is not loaded)."""
        if adapter_stack(self.model).remove(name).enabled:
            self._forget_prefixes()

    def adapters(self) -> tuple[AdapterFacts, ...]:
        """The loaded adapters, in the order added."""
        return tuple(_adapter_facts(a) for a in adapter_stack(self.model).adapters.values())

    def adapter_comparison(self, context_ids, target_id: int, top_n: int = 10, cancelled=lambda: False
                           ) -> AdapterComparisonView | None:
        """The next-token distribution after `context_ids` with the enabled adapters and without any, by
        replay (KL, the union of both top-N). ValueError when no adapter is enabled. None when cancelled."""
        return adapter_comparison(self.model, list(context_ids), target_id, self.tokenizer.token_text, top_n,
                                  cancelled)

    # -- quantization drift and RoPE (engine/instrumentation/drift.py, rope_view.py) --------------------
    def quant_drift(self, token_ids, top_n: int = 5, cancelled=lambda: False) -> QuantDriftView | None:
        """quant_diff along `token_ids` with both models' top-N per position, and what the float reference
        costs in memory (it is loaded on first use and kept until release_float_reference). None when
        `cancelled()` turns true; ValueError when nothing in the model is quantized."""
        require_quantized(self.model)  # ValueError: a float model has nothing to drift from
        if self._float_reference is None:
            self._float_reference = load_float_reference(self.source, self.config, self.model)
        with as_loaded(self.model), adapter_stack(self.model).suspended():  # quantization alone, as quant_diff
            return quant_drift(self.model, self._float_reference, list(token_ids), top_n, cancelled,
                               self.tokenizer.token_text, self.facts().weights)

    def release_float_reference(self) -> None:
        """Free the float reference quant_diff / quant_drift loaded, and give its memory back to the system."""
        self._float_reference = None
        give_back_memory()

    def rope_view(self, rope_spec: str | None = None, context: int = 0) -> RopeView:
        """What RoPE does per dimension pair under `rope_spec` ('TYPE:FACTOR' as the model panel's override;
        None: the loaded model's own scaling) at `context` tokens (0: the model's context), no forward pass."""
        config = self.config if rope_spec is None else with_rope_override(self._checkpoint_config, rope_spec)
        return rope_view(config, context, trained_context=self._checkpoint_config.max_seq_len)

    # -- for the window ----------------------------------------------------------------------
    # app/ may import only this facade, engine.records and engine.errors (an import-linter contract).
    # What the window's worker needs of engine internals (the built-in tools, the built-in MoE model)
    # it reaches through these few methods; they return plain values only.
    def tool_prompt_ids(self, messages: list[dict], template: str | None = None) -> list[int]:
        """`messages` rendered with the built-in tools offered to the model (templates that read `tools`)."""
        from engine.text.tools import BUILTIN_TOOLS

        return self.chat_prompt_ids(messages, tools=[t.spec() for t in BUILTIN_TOOLS.values()], template=template)

    def tool_call_params(self, params: SamplingParams, required: bool) -> SamplingParams:
        """`params` constrained to a call of a built-in tool (required) or either a call or prose."""
        from engine.text.tools import BUILTIN_TOOLS, tool_call_params

        return tool_call_params(params, list(BUILTIN_TOOLS.values()), required, self.tokenizer)

    def run_tool_calls(self, reply: str) -> list[dict]:
        """The built-in tool calls `reply` makes, each run: {"name", "arguments", "call" (the entry an
        assistant message's `tool_calls` holds), "result" (the tool's answer; None: the user answers)}."""
        from engine.text.tools import BUILTIN_TOOLS, parse_tool_calls, run_builtin

        return [{"name": c.name, "arguments": c.arguments, "call": c.message()["tool_calls"][0],
                 "result": run_builtin(c)} for c in parse_tool_calls(reply, list(BUILTIN_TOOLS.values()))]

    @staticmethod
    def ensure_builtin_moe(cache_dir: str | Path, progress=None) -> Path:
        """The built-in MoE model's folder under `cache_dir`, MoEfied from the default model on first use
        (minutes; `progress(stage, done, total)` may raise to cancel, leaving nothing behind)."""
        from engine.moefy.build import ensure_builtin_moe

        return ensure_builtin_moe(Path(cache_dir), progress)


def _adapter_facts(adapter) -> AdapterFacts:
    return AdapterFacts(adapter.name, adapter.path, adapter.rank, adapter.alpha, adapter.rslora, adapter.targets,
                        adapter.layers, adapter.parameters, adapter.enabled, adapter.scale)
