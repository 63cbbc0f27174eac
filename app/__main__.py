"""`glassbox` / `python -m app`: start the desktop app (optionally on a given model).

`--smoke` is the installers' self-test (app/smoke.py): the main window offscreen, the model
loaded, 8 tokens generated, one summary line printed.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glassbox", description="Glassbox: watch an LLM think")
    parser.add_argument("model", nargs="?", help="GGUF file or HF model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for the engine (1 keeps the GUI smooth on small machines)")
    parser.add_argument("--smoke", action="store_true",
                        help="self-test: offscreen window, load the model, generate 8 tokens, "
                             "print a summary, exit")
    parser.add_argument("--smoke-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--send-prompt", help=argparse.SUPPRESS)  # test hook: app/send_prompt.py
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # no screen needed, even where there is one

    import torch
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.settings import Settings
    from app.theme import apply_theme
    from engine.records import LoadOptions

    torch.set_num_threads(args.threads)
    app = QApplication(sys.argv[:1])
    # The self-test keeps its own settings and autosave, away from the user's.
    name = "Glassbox-smoke" if args.smoke else "Glassbox"
    app.setApplicationName(name)
    settings = Settings(application=name)
    apply_theme(app, dark=settings.dark_theme())
    window = MainWindow(settings=settings, model_path=args.model, autoload=not args.smoke,
                        offer_restore=not args.smoke)  # the self-test never offers the user's conversations
    if args.send_prompt:
        from app.send_prompt import SendOnLoad

        hook = SendOnLoad(window, args.send_prompt)  # noqa: F841 (parented to the window)
    window.resize(1400, 900)
    window.show()
    if args.smoke:
        from app.smoke import SmokeRun

        run = SmokeRun(app, window, args.smoke_timeout)  # noqa: F841 (parented to the window)
        window.load_model(args.model, LoadOptions())
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
