"""A DeepSeek-V2 checkpoint in the window: the memory panel states the latent's KV bytes against per-head
K/V, and the routing panel shows its group-limited routing (groups drawn, the token's kept groups named)."""
from __future__ import annotations

from tests.app.test_main_window import chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_deepseek_in_the_memory_and_routing_panels(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("deepseek_v2")
    window = open_window(qtbot, settings, directory)
    try:
        facts = window.models.facts
        assert facts.architecture == "deepseek_v2" and (facts.expert_groups, facts.expert_groups_kept) == (4, 2)
        kv_heads = window.model_panel.fact_labels["kv_heads"].text()
        assert facts.kv_latent == 40 and kv_heads == "4 from a 40-value latent (MLA)"
        qtbot.waitUntil(lambda: "Latent attention (MLA)" in window.memory.figures.text(), timeout=10_000)
        # 2 layers of (32 + 8) fp32 values: 0.32 KB a token; per-head K/V would hold 4 × (24 + 12) values
        assert "40 values a token and layer = 0.32 KB" in window.memory.figures.text()
        assert "(144 values) it would be 1.15 KB (3.6× more)" in window.memory.figures.text()
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=4)
        routing = window.routing
        routing.layer.setValue(1)  # layer 0 is dense
        qtbot.waitUntil(lambda: "kept groups" in routing.balance.text(), timeout=10_000)
        assert "4 groups of 2" in routing.balance.text() and len(routing.group_lines()) == 9
    finally:
        close_window(window)
