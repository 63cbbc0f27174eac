"""A gpt-oss checkpoint in the window: its routing (biased router, every layer MoE) fills the routing
panel, and the attention panel draws each row's sink share as its own column, with the layer's kind named."""
from __future__ import annotations

import numpy as np

from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_gpt_oss_in_the_routing_and_attention_panels(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("gpt_oss")
    window = open_window(qtbot, settings, directory)
    try:
        assert window.models.facts.architecture == "gpt_oss"
        window.show()  # attention is computed on demand, for a panel on screen
        window.docks["Attention"].raise_()
        chat(qtbot, window, "t1 t2 t3 t4 t5 t6 t7 t8 t9 t10", max_new_tokens=6)
        for layer in (0, 1):
            matrix = window.routing.token_expert_matrix(layer)
            assert matrix.shape[1] == 4 and matrix.sum() > 0
        assert not window.routing.is_dense_message_shown()
        panel = window.attention
        panel.layer.setValue(0)
        qtbot.waitUntil(lambda: panel.sink_column() is not None and panel.current_layer() == 0
                        and panel.matrix().size > 0, timeout=TIMEOUT)
        assert panel.sink_plot.isVisible() and "sliding" in panel.layer.suffix()
        sinks = panel.sink_column()
        assert np.all((sinks > 0) & (sinks < 1))
        np.testing.assert_allclose(np.nansum(panel.matrix(), axis=1) + sinks, 1, atol=1e-4)
    finally:
        close_window(window)
