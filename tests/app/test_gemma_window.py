"""A Gemma 3 checkpoint in the window: the model controller tells the attention panel each layer's window,
so a sliding layer's map shows only each query's last positions (the rest unseen, an edge drawn) and the
global layer every earlier one; a chat runs in the Gemma format (the tiny tokenizer ships no template)."""
from __future__ import annotations

import numpy as np

from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_gemma3_sliding_and_global_layers_in_the_attention_panel(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("gemma3", eos_token_id=127)  # t1 is not an end of turn here
    window = open_window(qtbot, settings, directory)
    try:
        assert window.models.facts.architecture == "gemma3"
        assert window.models.facts.sliding_windows == (8, None)
        window.show()  # attention is computed on demand, for a panel on screen
        window.docks["Attention"].raise_()
        chat(qtbot, window, " ".join(f"t{i}" for i in range(3, 23)), max_new_tokens=6)
        panel = window.attention
        panel.layer.setValue(0)
        qtbot.waitUntil(lambda: panel.current_layer() == 0 and panel.matrix().size > 0
                        and panel.note.text().startswith("Layer 0"), timeout=TIMEOUT)
        assert panel.layer.suffix() == " · sliding 8"
        assert (~np.isnan(panel.matrix())).sum(axis=1).max() == 8  # no query sees more than its window
        assert len(panel.window_edge.getData()[0]) > 0
        panel.layer.setValue(1)
        qtbot.waitUntil(lambda: panel.note.text().startswith("Layer 1"), timeout=TIMEOUT)
        assert panel.layer.suffix() == " · global"
        assert (~np.isnan(panel.matrix())).sum(axis=1).max() > 8
    finally:
        close_window(window)
