"""The attention panel on a sliding-window model (issue 22), as a 1366×768 laptop screen shows it:
a tiny random Gemma 3 (5 sliding-window layers : 1 global, windows of 8) with a small word-level
tokenizer, a short chat, a token selected, the Attention dock raised on a sliding layer. Saves
docs/screenshots/attention_sliding_window.png (and, with --global, attention_global_layer.png too).
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_sliding_window.py
The model is random, so its replies are word salad; the point is the window's edge in the map.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from screenshots import chat, new_window, settle, shoot_dock, wait_for, wait_until  # noqa: E402

WORDS = ("the a an of to in on for with is was are be it this that and or but not sky blue light air sun sea "
         "why how what when where who because so very more most some many few red green small large old new "
         "day night time year way world water fire earth wind cloud rain snow tree leaf river stone bird song "
         "look see hear tell make take give find think know want like need come go say ask answer question "
         "short long word sentence story idea reason colour scatter wave bright dark warm cold me about by over away "
         "sings goes scattered . , ? !").split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "user", "model"]


def write_tokenizer(directory: Path) -> int:
    """A word-level tokenizer whose vocabulary holds Gemma's turn markers, so the chat format reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + list(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<end_of_turn>",
                                                                 "bos_token": "<bos>", "add_bos_token": True}))
    return len(vocab)


def build_model(directory: Path) -> None:
    from tests.tiny_models import build_hf_model

    vocab = write_tokenizer(directory)
    model = build_hf_model("gemma3", seed=3, vocab_size=vocab, num_hidden_layers=6, head_dim=16,
                           layer_types=None, sliding_window_pattern=6, sliding_window=8,
                           bos_token_id=2, eos_token_id=5, pad_token_id=0)
    model.save_pretrained(directory)


def main() -> int:
    from engine.records import LoadOptions, SamplingParams

    app, window = new_window()
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder))
        window.load_model(folder, LoadOptions(device="cpu", dtype="float32"))
        wait_for(window.worker.loaded)
        # a prompt of real words (the reply of a random model is word salad): the keys on screen read as words
        window.sampler.set_params(SamplingParams(temperature=0.7, top_k=20, seed=2, max_new_tokens=24,
                                                 ignore_eos=True))
        chat(window, "why is the sky blue ? tell me a short story about the sea and the wind , and the reason "
                     "light is scattered by air . the sun is bright and warm in the day , the night is dark and "
                     "cold , and a small bird sings a long song when the rain is over and the cloud goes away .")
        window.chat.step_clicked.emit(len(window.controller.steps) - 1)
        settle(400)
        window.docks["Attention"].raise_()
        window.attention.layer.setValue(2)  # a sliding-window layer
        wait_until(lambda: window.attention.matrix().size > 0 and window.attention.current_layer() == 2)
        shoot_dock(app, window, "Attention", "attention_sliding_window")
        if "--global" in sys.argv:
            window.attention.layer.setValue(5)
            wait_until(lambda: window.attention.note.text().startswith("Layer 5"))
            shoot_dock(app, window, "Attention", "attention_global_layer")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
