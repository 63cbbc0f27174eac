"""`glassbox` / `python -m app`: start the desktop app (optionally on a given model).

`glassbox serve [MODEL] [--host --port --api-key ...]` serves the model with the OpenAI API instead,
without a window (app/serve/cli.py). `--smoke` is the installers' self-test (app/smoke.py): the main
window offscreen, the model loaded, 8 tokens generated, one summary line printed. With `--prompt-file FILE --max-new-tokens N`
it is the window's benchmark (docs/benchmarks.md): FILE's text, N greedy tokens, decode speed and memory.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    # In a PyInstaller bundle the engine's helper process (its tokenizer) starts this executable again:
    # this runs the helper and exits; everywhere else it does nothing.
    multiprocessing.freeze_support()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the OpenAI-compatible server, headless: Qt is never imported
        from app.serve.cli import main as serve

        return serve(argv[1:])
    from engine.records.adapters import adapter_spec  # plain strings: no torch, no Qt

    parser = argparse.ArgumentParser(prog="glassbox", description="Glassbox: watch an LLM think")
    parser.add_argument("model", nargs="?", help="GGUF file or HF model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for the engine's matmuls (default 0: one per physical core; the "
                             "GUI thread stays responsive regardless: the engine runs one step per event)")
    parser.add_argument("--lora", metavar="DIR[:SCALE]", action="append", default=[], type=adapter_spec,
                        help="a PEFT LoRA adapter folder to load onto the model, scaled (default 1); repeatable")
    parser.add_argument("--smoke", action="store_true",
                        help="self-test: offscreen window, load the model, generate 8 tokens, "
                             "print a summary, exit")
    parser.add_argument("--prompt-file", metavar="FILE",
                        help="with --smoke: send FILE's text instead (greedy, EOS ignored) and add decode "
                             "speed and memory to the summary")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="with --smoke: tokens to generate (default 8)")
    parser.add_argument("--smoke-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--send-prompt", help=argparse.SUPPRESS)  # test hook: app/send_prompt.py
    args = parser.parse_args(argv)
    if (args.prompt_file or args.max_new_tokens is not None) and not args.smoke:
        parser.error("--prompt-file and --max-new-tokens go with --smoke")
    if args.threads < 0 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        parser.error("--threads must be >= 0 and --max-new-tokens >= 1")
    prompt = None
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"cannot read {args.prompt_file}: {e}")
    if args.smoke:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # no screen needed, even where there is one

    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.settings import Settings
    from app.theme import apply_theme
    from engine.records import LoadOptions

    app = QApplication(sys.argv[:1])
    # The self-test keeps its own settings and autosave, away from the user's.
    name = "Glassbox-smoke" if args.smoke else "Glassbox"
    app.setApplicationName(name)
    settings = Settings(application=name)
    apply_theme(app, dark=settings.dark_theme())
    window = MainWindow(settings=settings, model_path=args.model, autoload=False,
                        offer_restore=not args.smoke)  # the self-test never offers the user's conversations
    if args.send_prompt:
        from app.send_prompt import SendOnLoad

        hook = SendOnLoad(window, args.send_prompt)  # noqa: F841 (parented to the window)
    window.show()
    if args.smoke:
        from app.smoke import PROMPT, TOKENS, SmokeRun

        run = SmokeRun(app, window, args.smoke_timeout, prompt=prompt if prompt is not None else PROMPT,  # noqa: F841
                       tokens=args.max_new_tokens or TOKENS, measure=prompt is not None)
    # The engine's threads: its worker thread sets them when it loads (OpenMP counts per thread).
    window.load_model(args.model, LoadOptions(threads=args.threads, adapters=tuple(args.lora)))
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
