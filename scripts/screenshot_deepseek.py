"""The memory and routing panels on a DeepSeek-V2-shaped model (issue 22), as a 1366×768 laptop screen shows
them: a tiny random DeepSeek-V2 (latent attention, layer 0 dense, then 16 experts in 4 groups of which each
token keeps 2) after a short chat. Saves docs/screenshots/memory_mla_latent.png (the KV cache's latent
against per-head K/V) and routing_group_limited.png (the groups divided, the kept ones named).
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_deepseek.py
The model is random, so its replies are word salad; the point is what the panels say about its shape.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from screenshot_sliding_window import write_tokenizer  # noqa: E402
from screenshots import chat, new_window, settle, shoot_dock, wait_for, wait_until  # noqa: E402


def build_model(directory: Path) -> None:
    from tests.tiny_models import build_hf_model

    vocab = write_tokenizer(directory)
    model = build_hf_model("deepseek_v2", seed=4, vocab_size=vocab, num_hidden_layers=4, n_routed_experts=16,
                           num_experts_per_tok=4, n_group=4, topk_group=2, bos_token_id=2, eos_token_id=5,
                           pad_token_id=0)
    model.save_pretrained(directory)


def main() -> int:
    from engine.records import LoadOptions, SamplingParams

    app, window = new_window()
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder))
        window.load_model(folder, LoadOptions(device="cpu", dtype="float32"))
        wait_for(window.worker.loaded)
        window.sampler.set_params(SamplingParams(temperature=0.7, top_k=20, seed=2, max_new_tokens=24,
                                                 ignore_eos=True))
        chat(window, "why is the sky blue ? tell me a short story about the sea and the wind .")
        window.chat.step_clicked.emit(len(window.controller.steps) - 1)
        settle(400)
        window.docks["Memory"].raise_()
        wait_until(lambda: "Latent attention (MLA)" in window.memory.figures.text())
        shoot_dock(app, window, "Memory", "memory_mla_latent")
        window.docks["Routing"].raise_()
        window.routing.layer.setValue(1)
        wait_until(lambda: "kept groups" in window.routing.balance.text())
        shoot_dock(app, window, "Routing", "routing_group_limited")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
