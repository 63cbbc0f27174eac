"""`python -m engine` / `glassbox-cli`: generate or chat in a terminal. Proves the engine runs without Qt."""
from __future__ import annotations

import argparse
import json
import sys

from engine.device import physical_cores
from engine.errors import EngineError
from engine.records import GenerationDone, SamplingParams, TokenStep
from engine.records.adapters import adapter_spec


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF model directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--rope-scaling", metavar="TYPE:FACTOR",
                   help="override RoPE scaling, e.g. yarn:4, linear:2, dynamic:2, llama3:8, none")
    p.add_argument("--threads", type=int, default=0,
                   help=f"CPU threads for matmuls (default 0: one per physical core, {physical_cores()} here)")
    p.add_argument("--kv-block-size", type=int, default=16, help="tokens per KV cache block")
    p.add_argument("--context-length", type=int, default=0, help="context in tokens (default: the model's)")
    p.add_argument("--kv-budget", type=float, default=0.5,
                   help="KV cache size: GiB on the CPU, or a fraction of free GPU memory if < 1 on CUDA")
    p.add_argument("--quant", default="auto",
                   help="weights: auto (a GGUF's Q8_0/Q4_0/Q4_1 stay packed on the CPU) | none | int8 | "
                        "int4-g32 | int4-g64 | int4-g128")
    p.add_argument("--quant-exact", action="store_true",
                   help="CPU: feed quantized matmuls fp32 activations (exact, slower) instead of bf16")
    p.add_argument("--no-quant-head", dest="quant_head", action="store_false",
                   help="keep the LM head and embedding in float")
    p.add_argument("--expert-offload", action="store_true",
                   help="MoE: keep experts in CPU memory, copy the used ones to the GPU per step")
    p.add_argument("--lora", metavar="DIR[:SCALE]", action="append", default=[], type=adapter_spec,
                   help="a PEFT LoRA adapter folder to run beside the weights, scaled (default 1); repeatable")


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past end-of-sequence: exactly --max-new-tokens tokens (benchmarks)")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--typical-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--draft", metavar="PATH|self-int4|self-layers:L|ngram",
                   help="speculative decoding: draft with a model sharing the tokenizer, the model itself in int4, "
                        "its first L layers, or n-gram prompt lookup")
    p.add_argument("--spec-k", type=int, default=4, help="tokens drafted per step (with --draft)")
    p.add_argument("--spec-adaptive", action="store_true", help="adapt k to the acceptance (between 1 and 2k)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Glassbox engine, no GUI")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="continue a prompt (or answer it with --chat) and exit")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this UTF-8 file")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", help="system prompt (with --chat)")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    gen.add_argument("--n", type=int, default=1, help="parallel samples sharing the prompt's KV blocks")
    gen.add_argument("--best-of", type=int, default=0, help="sample this many, print the best by mean log-prob")
    gen.add_argument("--beams", type=int, default=0, help="beam search width")
    structured = gen.add_mutually_exclusive_group()  # structured output: only tokens that keep it valid
    structured.add_argument("--json-schema", metavar="FILE", help="constrain the output to JSON valid under this schema")
    structured.add_argument("--regex", metavar="R", help="constrain the output to a full match of this regular expression")
    structured.add_argument("--grammar", metavar="FILE", help="constrain the output to this grammar (Lark or llama.cpp GBNF)")
    _add_model_args(gen)
    _add_sampling_args(gen, temperature=0.0)
    chat = sub.add_parser("chat", help="interactive multi-turn chat")
    chat.add_argument("--system", help="system prompt")
    _add_model_args(chat)
    _add_sampling_args(chat, temperature=0.7)
    ppl = sub.add_parser("perplexity", help="perplexity over a text, per quantization (sliding window)")
    ppl.add_argument("--text", help="UTF-8 text file (default: the shipped public-domain text)")
    ppl.add_argument("--window", type=int, default=512)
    ppl.add_argument("--stride", type=int, default=256)
    ppl.add_argument("--json", action="store_true", help="one JSON object per quantization")
    ppl.add_argument("--kl", action="store_true",
                     help="also the mean per-token KL divergence and top-1 agreement against --quant none")
    _add_model_args(ppl)
    ppl.set_defaults(quant="none")
    ppl.epilog = "--quant takes a comma-separated list here, e.g. none,int8,int4-g32,auto"
    sub.add_parser("bench", help="prefill/decode speed and memory (see: python -m engine bench --help)")
    mo = sub.add_parser("moefy", help="MoEfication: split a dense model's MLPs into experts (a Qwen2-MoE folder)")
    mo.add_argument("--model", help="dense SwiGLU model: GGUF file or HF folder (default: the default model)")
    mo.add_argument("--experts", type=int, default=8)
    mo.add_argument("--top-k", type=int, default=2, help="experts per token written to config.json")
    mo.add_argument("--out", required=True, help="output folder")
    mo.add_argument("--fit-tokens", type=int, default=4096, help="tokens of the shipped text the routers are fit on")
    mo.add_argument("--shared-fraction", type=float, default=0.75,
                    help="share of each MLP's neurons kept always on as a shared expert (0 = none)")
    mo.add_argument("--dense-layers", type=int, default=1, help="leading layers that keep their dense MLP")
    mo.add_argument("--report", action="store_true",
                    help="then perplexity at top-k E, E/2, E/4 beside the dense model, and the load balance")
    mo.add_argument("--threads", type=int, default=0)
    return parser


def _load(args):
    from engine.engine import Engine
    from engine.records import LoadOptions

    options = LoadOptions(device=args.device, dtype=args.dtype, rope_scaling=args.rope_scaling,
                          kv_budget_gib=args.kv_budget, kv_gpu_fraction=min(args.kv_budget, 0.9),
                          kv_block_size=args.kv_block_size, context_length=args.context_length,
                          quant=args.quant, quant_exact=args.quant_exact, quant_head=args.quant_head,
                          expert_offload=args.expert_offload, threads=args.threads,  # Engine.load applies it
                          adapters=tuple(args.lora))
    return Engine.load(args.model, options)


def _params(args) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          stop=tuple(args.stop), max_new_tokens=args.max_new_tokens, seed=args.seed,
                          ignore_eos=args.ignore_eos, **_constraint(args))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _constraint(args) -> dict:
    """--json-schema FILE | --regex R | --grammar FILE as SamplingParams fields (none given: no constraint)."""
    if getattr(args, "json_schema", None):
        return {"constraint_kind": "json_schema", "constraint": _read(args.json_schema)}
    if getattr(args, "regex", None):
        return {"constraint_kind": "regex", "constraint": args.regex}
    if getattr(args, "grammar", None):
        return {"constraint_kind": "grammar", "constraint": _read(args.grammar)}
    return {}


def _spec(args):
    from engine.records import SpeculativeOptions

    return SpeculativeOptions(args.draft or "", args.spec_k, args.spec_adaptive)


def _spec_line(done: GenerationDone) -> str:
    s = done.stats.get("speculative")
    if s is None:
        return ""
    return (f", {s.drafter}: acceptance {s.acceptance_rate:.0%}, {s.mean_accepted:.2f} accepted per step, "
            f"measured speedup {s.speedup:.2f}x")


def _stream(engine, prompt_ids, params, echo: bool, speculative=None) -> GenerationDone:
    done = None
    for item in engine.generate(prompt_ids, params, speculative=speculative):
        if isinstance(item, TokenStep) and echo:
            sys.stdout.write(item.text)
            sys.stdout.flush()
        elif isinstance(item, GenerationDone):
            done = item
    return done


def cmd_generate(args) -> int:
    text = args.prompt if args.prompt is not None else _read(args.prompt_file)
    engine = _load(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt_ids = engine.chat_prompt_ids(messages + [{"role": "user", "content": text}])
    else:
        prompt_ids = engine.prompt_ids(text)
    if args.n > 1 or args.best_of or args.beams:
        return _many(engine, prompt_ids, args)
    done = _stream(engine, prompt_ids, _params(args), echo=not args.json, speculative=_spec(args))
    if args.json:
        print(json.dumps({
            "text": done.text, "token_ids": list(done.token_ids), "prompt_tokens": done.prompt_tokens,
            "finish_reason": done.finish_reason, "prefill_ms": round(done.prefill_ms, 2),
            "decode_ms": round(done.decode_ms, 2), "decode_tokens_per_s": round(done.decode_tokens_per_s, 2),
            **({"speculative": _spec_json(done.stats["speculative"])} if "speculative" in done.stats else {}),
        }))
    else:
        print()
        print(f"[{len(done.token_ids)} tokens, {done.finish_reason}, prefill {done.prefill_ms:.0f} ms, "
              f"decode {done.decode_tokens_per_s:.1f} tok/s{_spec_line(done)}]", file=sys.stderr)
    return 0


def _many(engine, prompt_ids, args) -> int:
    """Several sequences (samples, best-of, beams): print each result once it is complete."""
    from engine.records import GenerationRequest, RequestDone

    spec = GenerationRequest(tuple(prompt_ids), _params(args), n=args.n, best_of=args.best_of, beams=args.beams,
                             speculative=_spec(args))
    done = next(x for x in engine.stream(spec) if isinstance(x, RequestDone))
    if done.error:
        raise EngineError(done.error)
    if args.json:
        print(json.dumps({"results": [{"text": r.text, "token_ids": list(r.token_ids), "finish_reason": r.finish_reason,
                                       "mean_logprob": round(r.mean_logprob, 4)} for r in done.results],
                          "prompt_tokens": done.prompt_tokens, "prefill_ms": round(done.prefill_ms, 2),
                          "decode_ms": round(done.decode_ms, 2)}))
    else:
        for r in done.results:
            print(f"--- [{r.index}] mean log-prob {r.mean_logprob:.3f}, {r.finish_reason}\n{r.text}")
    return 0


def cmd_perplexity(args) -> int:
    import time

    from engine.instrumentation.quality import SHIPPED_TEXT, evaluate

    text_path = args.text or SHIPPED_TEXT
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    modes = [m.strip() for m in args.quant.split(",") if m.strip()]
    reference = None  # the float model the KL divergence is measured against
    for mode in modes:
        args.quant = mode
        engine = _load(args)
        ids = engine.tokenizer.encode(text, add_special_tokens=True)
        if args.kl and reference is None:
            args.quant = "none"
            reference = engine.model if mode == "none" else _load(args).model
        started = time.perf_counter()
        result, diff = evaluate(engine.model, ids, args.window, args.stride, reference if args.kl else None)
        row = {"quant": mode, "perplexity": round(result.perplexity, 4), "mean_nll": round(result.mean_nll, 5),
               "tokens": result.tokens_scored, "window": args.window, "stride": args.stride,
               "weight_bytes": sum(engine.model.weight_bytes().values()), "seconds": round(time.perf_counter() - started, 1)}
        if diff is not None:
            row.update(mean_kl=round(diff.mean_kl, 6), top1_agreement=round(diff.agreement, 4))
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            extra = f", KL {row['mean_kl']:.5f}, top-1 agree {row['top1_agreement']:.1%}" if args.kl else ""
            print(f"{mode:>10}: perplexity {row['perplexity']:.3f} over {row['tokens']} tokens, "
                  f"weights {row['weight_bytes'] / 1e6:.1f} MB{extra}", flush=True)
    return 0


def cmd_moefy(args) -> int:
    from engine.device import set_threads
    from engine.moefy.build import moefy
    from engine.moefy.report import report

    set_threads(args.threads)
    progress = lambda stage, done, total: print(f"\r{stage} {done}/{total}", end="", file=sys.stderr, flush=True)  # noqa: E731
    built = moefy(args.model, args.out, args.experts, args.top_k, args.fit_tokens, progress, args.shared_fraction,
                  args.dense_layers)
    print(file=sys.stderr)
    print(json.dumps(built))
    if args.report:
        ks = sorted({args.experts, max(args.experts // 2, 1), max(args.experts // 4, 1)}, reverse=True)
        result = report(args.model, args.out, ks, log=lambda row: print(json.dumps(row), flush=True))
        with open(f"{args.out}/moefy.json", "w", encoding="utf-8") as f:
            json.dump({**built, "report": result}, f, indent=1)
    return 0


def _spec_json(s) -> dict:
    return {"drafter": s.drafter, "acceptance_rate": round(s.acceptance_rate, 4),
            "acceptance_by_position": [round(a, 4) for a in s.acceptance_by_position],
            "mean_accepted": round(s.mean_accepted, 3), "speedup": round(s.speedup, 3)}


def cmd_chat(args) -> int:
    engine = _load(args)
    print(f"Glassbox chat — {engine.source.name}. Empty line or Ctrl-D to quit.", file=sys.stderr)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        try:
            user = input("you> ").strip()
        except EOFError:
            break
        if not user:
            break
        messages.append({"role": "user", "content": user})
        sys.stdout.write("model> ")
        try:
            done = _stream(engine, engine.chat_prompt_ids(messages), _params(args), echo=True,
                           speculative=_spec(args))
        except EngineError as e:
            messages.pop()  # the turn failed; keep the conversation as it was
            print(f"\nerror: {e}", file=sys.stderr)
            continue
        print()
        messages.append({"role": "assistant", "content": done.text})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: it re-invokes itself as worker subprocesses
        from engine.bench.speed import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return {"generate": cmd_generate, "chat": cmd_chat, "perplexity": cmd_perplexity,
                "moefy": cmd_moefy}[args.command](args)
    except (EngineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
