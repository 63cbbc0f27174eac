"""`glassbox` / `python -m app`: start the desktop app (optionally on a given model)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glassbox", description="Glassbox: watch an LLM think")
    parser.add_argument("model", nargs="?", help="GGUF file or HF model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for the engine (1 keeps the GUI smooth on small machines)")
    args = parser.parse_args(argv)

    import torch
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.theme import apply_theme

    torch.set_num_threads(args.threads)
    app = QApplication(sys.argv[:1])
    app.setApplicationName("Glassbox")
    from app.settings import Settings

    settings = Settings()
    apply_theme(app, dark=settings.dark_theme())
    window = MainWindow(settings=settings, model_path=args.model)
    window.resize(1400, 900)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
