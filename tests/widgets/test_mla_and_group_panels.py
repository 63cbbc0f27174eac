"""DeepSeek-V2 in the panels: the memory panel states the latent's KV bytes per token against per-head K/V,
and the routing panel divides group-limited experts into their groups and names the groups a token kept."""
import numpy as np

from engine.records import MemorySnapshot, RoutingRecord, StepRecord
from widgets.memory_panel import MemoryPanel
from widgets.routing_panel import RoutingPanel


def snapshot(**mla) -> MemorySnapshot:
    # DeepSeek-V2-Lite in bf16: 27 layers of (512 + 64) values, 2 bytes each, blocks of 16 tokens
    return MemorySnapshot(kv_blocks_total=4, kv_blocks_used=1, kv_blocks_free=3, kv_block_size=16,
                          kv_bytes_per_block=16 * 27 * 576 * 2, kv_tokens=10, kv_slots_filled=10,
                          block_tables={"0.0": (0,)}, block_refs=(1, 0, 0, 0), **mla)


def test_memory_panel_states_latent_bytes_against_per_head_kv(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show_memory(snapshot(kv_latent_values=576, kv_per_head_values=16 * (192 + 128)))
    text = panel.figures.text()
    assert "576 values a token and layer" in text and "31.10 KB a token" in text
    assert "as per-head K/V (5120 values) it would be 276.48 KB (8.9× more)" in text
    panel.show_memory(snapshot())  # any other architecture: nothing about latents
    assert "Latent" not in panel.figures.text()


def step(i: int, probs: list[float]) -> StepRecord:
    probs = np.array(probs) / sum(probs)
    top = np.argsort(-probs)[:3]
    return StepRecord(0, i, token_id=i, text=f"t{i}", prob=0.5,
                      routing=(RoutingRecord(1, tuple(map(int, top)), tuple(map(float, probs[top])),
                                             tuple(map(float, probs))),))


def test_routing_panel_shows_groups_and_the_groups_a_token_kept(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 8, 3)
    panel.set_expert_groups(4, 2)
    # groups {0,1} {2,3} {4,5} {6,7}: the best experts sit in groups 3 and 1
    panel.add_step(step(0, [1, 2, 1, 5, 1, 1, 9, 1]))
    assert panel.kept_groups(0, 1) == (1, 3)
    assert "4 groups of 2" in panel.balance.text() and "kept groups 1, 3" in panel.balance.text()
    lines = panel.group_lines()
    assert sorted(set(lines)) == [1.5, 3.5, 5.5] and len(lines) == 9  # on each of the three plots
    panel.set_expert_groups(1, 0)  # a model with plain top-k
    assert panel.kept_groups(0, 1) == () and not panel.group_lines() and "group" not in panel.balance.text()


def test_expert_numbers_never_overlap_on_a_narrow_plot(qtbot):
    """Seen at 1366x768 on a 16-expert DeepSeek-V2: the gate and load plots (~150 px each) printed all 16
    numbers into one another ("9101112 1314"); a narrow plot numbers every few experts, a wide one all."""
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.resize(464, 640)
    panel.set_model_info(4, 16, 4)
    panel.show()
    qtbot.waitExposed(panel)
    panel.add_step(step(0, list(range(1, 17))))
    qtbot.wait(50)
    for plot in (panel.tokens_plot, panel.layers_plot, panel.load_plot):
        numbers = panel.expert_numbers(plot)
        width = plot.getPlotItem().getViewBox().width()
        assert numbers[0] == 0 and len(numbers) * 15 <= width, (numbers, width)  # two digits take >= 15 px
    assert len(panel.expert_numbers(panel.tokens_plot)) == 16  # the full-width heatmap names every expert
    assert len(panel.expert_numbers(panel.layers_plot)) < 16


def test_the_gate_plot_s_colour_bar_stays_inside_its_plot_with_a_long_token(qtbot):
    """Seen at 1366x768: the gate plot's title ("gate weights for «␣make»") widened its column until the colour
    bar's numbers fell outside the plot."""
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.resize(464, 700)
    panel.set_model_info(4, 16, 4)
    panel.show()
    qtbot.waitExposed(panel)
    for i in range(124):
        record = step(i, list(range(1, 17)))
        panel.add_step(StepRecord(0, i, token_id=i, text=" photosynthesis", prob=0.5, routing=record.routing))
    qtbot.wait(50)
    bar = panel.colour_bars[1]
    assert bar.mapRectToScene(bar.boundingRect()).right() <= panel.layers_plot.width() + 1
