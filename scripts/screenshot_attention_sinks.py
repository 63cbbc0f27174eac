"""The attention panel on a model with attention sinks (gpt-oss, issue 22), as a 1366×768 laptop screen
shows it: a tiny random gpt-oss (sliding and full layers alternating, windows of 8, sinks set large enough
to take a visible share) with a small word-level tokenizer, a short chat, a token selected, the Attention
dock raised on a sliding layer. Saves docs/screenshots/attention_sinks.png.
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_attention_sinks.py
The model is random, so its replies are word salad; the point is the sink column beside the map.
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
    import torch

    from tests.tiny_models import build_hf_model

    vocab = write_tokenizer(directory)
    model = build_hf_model("gpt_oss", seed=3, vocab_size=vocab, num_hidden_layers=4,
                           layer_types=["sliding_attention", "full_attention"] * 2,
                           bos_token_id=2, eos_token_id=5, pad_token_id=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:  # random init leaves sinks near 0: give each head its own habit
            layer.self_attn.sinks.copy_(torch.randn(layer.self_attn.sinks.shape, generator=g) * 1.5 + 1.5)
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
        chat(window, "why is the sky blue ? tell me a short story about the sea and the wind , and the reason "
                     "light is scattered by air . the sun is bright and warm in the day , the night is dark .")
        window.chat.step_clicked.emit(len(window.controller.steps) - 1)
        settle(400)
        window.docks["Attention"].raise_()
        window.attention.layer.setValue(2)  # a sliding-window layer
        wait_until(lambda: window.attention.sink_column() is not None and window.attention.current_layer() == 2)
        window.attention.choose(("head", 1))
        settle(200)
        shoot_dock(app, window, "Attention", "attention_sinks")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
