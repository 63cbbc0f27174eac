"""Screenshots of every panel during a real chat with the default model, for docs/screenshots/.

Run under a real X server (Xvfb), not offscreen, so what is saved is what a person sees:
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py
The routing panel is also shown on an MoE, since the default model is dense: the MoEfied default
model when a folder is given (`--moe DIR`, from `python -m engine moefy --out DIR`), otherwise a tiny
random MoE (built with transformers, a test dependency).

`--speculative` saves the chat of a speculative reply (chat_speculative.png), at 1366×768 like `--laptop`.

`--panels` takes issue 19's panel screenshots as a laptop shows them (1366×768, the window filling the
screen): after a sampled chat with the default model and a token clicked, each dock is raised, its view
computed, and the dock saved as the screen shows it; the routing panel on the built-in MoE (`--moe DIR`,
or the cached one if it was built):
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshots.py --panels

`--chat` takes issue 20's screenshots at 1366×768: a branched conversation with Markdown replies
(chat_branched_markdown.png), the conversations list (conversations_list.png) and the sampler with a user
preset (panel_sampler_presets.png).

`--laptop` instead shows the whole window as a laptop screen holds it, filling a 1366×768 screen, after a
short chat with the default model, and saves the X server's own picture of the screen:
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshots.py --laptop
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))


def wait_for(signal, timeout_ms: int = 120_000):
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def settle(ms: int = 300):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def chat(window, text: str):
    window.chat.input.setPlainText(text)
    window.chat.send_button.click()
    wait_for(window.worker.finished)
    settle()


def shoot(window, name: str):
    window.grab().save(str(OUT / f"{name}.png"))


def main() -> int:
    import torch

    from app.main_window import MainWindow
    from app.settings import Settings
    from app.theme import apply_theme
    from engine.records import LoadOptions, SamplingParams

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    app = QApplication([])
    apply_theme(app, dark="--dark" in sys.argv)
    settings = Settings("GlassboxScreenshots", "app")
    settings.q.clear()  # the same layout every time, whatever an earlier run left
    window = MainWindow(settings=settings, autoload=False, offer_restore=False)
    if "--laptop" in sys.argv:
        return shoot_laptop(app, window)
    if "--speculative" in sys.argv:
        return shoot_speculative(app, window)
    if "--panels" in sys.argv:
        return shoot_panels(app, window)
    if "--chat" in sys.argv:
        return shoot_chat(app, window)
    window.resize(1600, 1000)
    window.show()
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=60))
    window.chat.system.setText("You are a helpful assistant.")
    chat(window, "Explain in two sentences why the sky is blue.")
    shoot(window, "main_window")
    for name, dock in window.docks.items():
        dock.raise_()
        settle(150)
        dock.widget().grab().save(str(OUT / f"panel_{name.lower().replace(' ', '_')}.png"))
    if "--moe" in sys.argv:
        shoot_moe(window, sys.argv[sys.argv.index("--moe") + 1])
    else:
        shoot_tiny_moe(window)
    window.close()
    print(f"screenshots in {OUT}")
    return 0


def shoot_laptop(app, window) -> int:
    """The whole screen (the window fills it), as the X server shows it."""
    from engine.records import LoadOptions, SamplingParams

    screen = app.primaryScreen()
    window.setGeometry(screen.availableGeometry())
    window.show()
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=40))
    chat(window, "Explain in two sentences why the sky is blue.")
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=70))
    chat(window, "Give me three tips for staying healthy, as a numbered list.")  # a reply of several lines
    window.chat.input.setPlainText("")  # the placeholder shows
    window.chat.step_clicked.emit(3)  # a token's distribution in the probabilities panel
    settle(800)
    suffix = "_dark" if "--dark" in sys.argv else ""
    name = f"window_{screen.size().width()}x{screen.size().height()}{suffix}"
    screen.grabWindow(0).save(str(OUT / f"{name}.png"))  # the root window: exactly what is on the screen
    print(f"{OUT / name}.png: window {window.width()}x{window.height()}, minimum {window.minimumSizeHint().width()}x"
          f"{window.minimumSizeHint().height()}")
    window.close()
    return 0


def shoot_speculative(app, window) -> int:
    """The chat of a speculative reply (prompt lookup drafting from a repetitive prompt), rejected drafts
    shown, with the marks' legend: docs/screenshots/chat_speculative.png."""
    from engine.records import LoadOptions, SamplingParams

    window.setGeometry(app.primaryScreen().availableGeometry())
    window.show()
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=60))
    window.sampler.drafter.setCurrentText("Prompt lookup (n-gram)")
    window.sampler.spec_k.setValue(4)
    chat(window, "Copy this list exactly, twice: red apples, green pears, blue plums, yellow lemons.")
    window.chat.show_rejected.setChecked(True)
    settle(500)
    window.chat.grab().save(str(OUT / "chat_speculative.png"))
    print(f"{OUT / 'chat_speculative.png'}")
    window.close()
    return 0


def new_window():
    """(app, window): a QApplication and a fresh main window in the light theme over the whole screen, with
    settings of its own (cleared), as the single-panel screenshot scripts start."""
    import torch

    from app.main_window import MainWindow
    from app.settings import Settings
    from app.theme import apply_theme

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    app = QApplication([])
    apply_theme(app, dark=False)
    settings = Settings("GlassboxScreenshots", "app")
    settings.q.clear()
    window = MainWindow(settings=settings, autoload=False, offer_restore=False)
    window.setGeometry(app.primaryScreen().availableGeometry())
    window.show()
    return app, window


def wait_until(condition, timeout_ms: int = 120_000) -> bool:
    waited = 0
    while not condition() and waited < timeout_ms:
        settle(100)
        waited += 100
    return condition()


def shoot_dock(app, window, name: str, file: str) -> None:
    """The dock as the screen shows it (title bar and tabs included)."""
    dock = window.docks[name]
    settle(400)
    top_left = dock.mapToGlobal(dock.rect().topLeft())
    app.primaryScreen().grabWindow(0, top_left.x(), top_left.y(), dock.width(), dock.height()).save(
        str(OUT / f"{file}.png"))
    area = dock.widget()
    scrolls = [d for d, bar in (("down", area.verticalScrollBar()), ("sideways", area.horizontalScrollBar()))
               if bar.isVisible()]
    print(f"{OUT / file}.png ({dock.width()}x{dock.height()}; panel least "
          f"{area.widget().minimumSizeHint().width()}x{area.widget().minimumSizeHint().height()}"
          f"{'; scrolls ' + ' and '.join(scrolls) if scrolls else ''})")


def shoot_panels(app, window) -> int:
    from engine.records import Intervention, LoadOptions, SamplingParams

    window.setGeometry(app.primaryScreen().availableGeometry())
    window.show()
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05,
                                             repetition_penalty=1.15, seed=7, max_new_tokens=70))
    chat(window, "Give me three tips for staying healthy, as a numbered list.")
    steps = window.controller.steps
    pick = next((i for i, s in enumerate(steps) if i >= 8 and 0.2 < s.prob < 0.8), 8)  # a token with rivals
    window.chat.step_clicked.emit(pick)
    settle(500)
    window.docks["Probabilities"].raise_()
    shoot_dock(app, window, "Probabilities", "panel_sampler_stages")
    window.docks["Logit lens"].raise_()
    wait_until(lambda: window.lens.view is not None)
    shoot_dock(app, window, "Logit lens", "panel_logit_lens")
    window.docks["What-if"].raise_()
    window.what_if.set_interventions((Intervention("head", 3, 4, 0.0), Intervention("mlp", 5, 0, 0.0)))
    wait_until(lambda: window.what_if.view is not None)
    shoot_dock(app, window, "What-if", "panel_intervention")
    window.what_if.set_interventions(())
    window.docks["Attention"].raise_()
    wait_until(lambda: window.attention.matrix().size > 0)
    shoot_dock(app, window, "Attention", "panel_attention")
    window.docks["Quant drift"].raise_()
    settle(200)
    window.drift.compute_requested.emit()
    wait_until(lambda: window.drift.view is not None)
    differs = [i for i, same in enumerate(window.drift.view.top1_agree) if not same]
    window.drift.select_column(differs[-1] if differs else len(window.drift.view.kl) - 1)
    shoot_dock(app, window, "Quant drift", "panel_quant_drift")
    window.docks["Memory"].raise_()
    shoot_dock(app, window, "Memory", "panel_memory")
    window.docks["RoPE"].raise_()
    window.model_panel.rope.setCurrentText("yarn")
    window.model_panel.rope_factor.setValue(4.0)
    wait_until(lambda: window.rope.view is not None and window.rope.view.scaling == "yarn")
    shoot_dock(app, window, "RoPE", "panel_rope")
    window.model_panel.rope.setCurrentIndex(0)
    folder = sys.argv[sys.argv.index("--moe") + 1] if "--moe" in sys.argv else str(
        Path.home() / ".cache" / "glassbox" / "models" / "SmolLM2-135M-MoE-8x2-v2")
    if Path(folder).is_dir():
        window.load_model(folder, LoadOptions(device="cpu"))
        wait_for(window.worker.loaded)
        window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=40))
        chat(window, "Give me three tips for staying healthy.")
        window.docks["Routing"].raise_()
        window.chat.step_clicked.emit(len(window.controller.steps) - 12)
        settle(500)
        shoot_dock(app, window, "Routing", "panel_expert_routing_moe")
    else:
        print(f"no built-in MoE at {folder}: the routing screenshot is not retaken")
    window.close()
    return 0


def shoot_chat(app, window) -> int:
    import tempfile as _tempfile

    from engine.records import LoadOptions, SamplingParams

    window.conversations.library.folder = Path(_tempfile.mkdtemp()) / "conversations"  # not the user's list
    window.setGeometry(app.primaryScreen().availableGeometry())
    window.show()
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=3, max_new_tokens=40))
    for question in ("What is the capital of France?", "Name two colours."):  # earlier conversations
        chat(window, question)
        window.conversations.new()
    window.sampler.set_params(SamplingParams(temperature=0.3, top_p=0.9, seed=5, max_new_tokens=120))
    window.chat.system.setText("You are a helpful assistant. Answer in Markdown.")
    chat(window, "Give me three tips for staying healthy, as a numbered list.")
    user = next(n for n in window.controller.tree.path() if n.message["role"] == "user")
    window.controller.edit(user.id, "Give me three tips for sleeping well, as a Markdown numbered list with "
                                    "the key words in **bold**, then one line of Python in a code block.")
    wait_for(window.worker.finished)
    settle(800)
    app.primaryScreen().grabWindow(0).save(str(OUT / "chat_branched_markdown.png"))
    print(OUT / "chat_branched_markdown.png")
    window.conversations.show()
    settle(500)
    dialog = window.conversations.dialog
    app.primaryScreen().grabWindow(0).save(str(OUT / "conversations_list.png"))  # over the window, as seen
    print(OUT / "conversations_list.png")
    dialog.hide()
    window.docks["Sampler"].raise_()
    window.sampler.more.setChecked(True)
    window.sampler.presets.save_as("Focused answers")
    window.sampler.knobs["temperature"].set_value(0.9)  # a knob moved: the preset reads "(modified)"
    shoot_dock(app, window, "Sampler", "panel_sampler_presets")
    window.close()
    return 0


def shoot_moe(window, folder: str):
    """The routing panel on a MoEfied default model, after a real chat."""
    from engine.records import LoadOptions, SamplingParams

    window.load_model(folder, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=60))
    chat(window, "Give me three tips for staying healthy.")
    window.docks["Routing"].raise_()
    window.routing.layer.setValue(15)
    settle(300)
    window.routing.grab().save(str(OUT / "panel_expert_routing_moe.png"))


def shoot_tiny_moe(window):
    from engine.records import LoadOptions, SamplingParams

    try:
        from tests.tiny_models import build_hf_model, write_tiny_tokenizer

        with tempfile.TemporaryDirectory() as d:
            model = build_hf_model("qwen3_moe", num_hidden_layers=4, num_experts=8, num_experts_per_tok=2)
            model.save_pretrained(d)
            write_tiny_tokenizer(Path(d), model.config.vocab_size)
            window.load_model(d, LoadOptions(device="cpu"))
            wait_for(window.worker.loaded)
            window.sampler.set_params(SamplingParams(temperature=1.0, seed=1, max_new_tokens=24))
            chat(window, "t1 t2 t3 t4 t5 t6")
            window.docks["Routing"].raise_()
            settle(200)
            window.routing.grab().save(str(OUT / "panel_expert_routing_moe.png"))
    except ImportError:
        print("transformers not installed: skipping the MoE routing screenshot")


if __name__ == "__main__":
    sys.exit(main())
