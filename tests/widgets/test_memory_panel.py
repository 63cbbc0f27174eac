"""The memory panel draws the block map and curves from real MemorySnapshots."""
from types import SimpleNamespace

from PySide6.QtCore import QPoint
from PySide6.QtGui import QColor, QPalette

from engine.records import MemorySnapshot, ModelFacts
from widgets.memory_panel import MemoryPanel, sequence_label


def snapshot(rss: int, cuda: int = 0, weights: int = 538_000_000) -> MemorySnapshot:
    refs = [2, 2, 1, 1, 0, 0, 0, 0, 1, 0]
    return MemorySnapshot(kv_blocks_total=10, kv_blocks_used=5, kv_blocks_shared=2, kv_blocks_cached_free=1,
                          kv_blocks_free=4, kv_block_size=16, kv_bytes_per_block=1024, kv_tokens=70,
                          kv_slots_filled=60, kv_contiguous_bytes=2 * 8192 * 64,
                          block_tables={"0.0": (0, 1, 2), "0.1": (0, 1, 3), "1.0": (8,)}, block_refs=tuple(refs),
                          cached_blocks=(5,), weight_bytes={"float32": weights}, process_rss=rss,
                          cuda_allocated=cuda, cuda_reserved=2 * cuda)


def test_block_map_matches_the_snapshot_and_curves_grow(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show_memory(snapshot(1_000_000_000))
    states = panel.block_states()
    assert states.count("shared") == 2 and states.count("cached") == 1 and states.count("free") == 4
    assert states[2] == "used:0.0" and states[3] == "used:0.1" and states[8] == "used:1.0"
    panel.show_memory(snapshot(1_001_000_000))
    assert list(panel.rss_curve()) == [1000.0, 1001.0]  # MB as the model panel counts them: 10^6 bytes
    text = panel.figures.text()
    assert "5 of 10 blocks" in panel.headline.text() and "contiguous" in text
    assert "float32 538.0 MB" in panel.weights_label.text()
    # the same figure as the model panel's weights line, for the same bytes
    assert ModelFacts.weights.fget(SimpleNamespace(weight_bytes=(("float32", 538_000_000),))) == "float32 538.0 MB"
    legend = panel.legend.text()
    # request 1 is the newest: the chat's reply; request 0's two samples are named as such
    assert "this conversation" in legend and "request 0 · sample 0" in legend and "request 0 · sample 1" in legend
    assert "seq" not in legend and "□</span>&nbsp;free" in legend  # the free swatch: an outline


def test_cuda_series_only_with_cuda_and_a_model_switch_forgets_the_old_model(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show_memory(snapshot(1_000_000_000))  # a CPU model: no CUDA curves, no CUDA figures
    assert panel.curve_names() == ["process RSS"] and "CUDA" not in panel.figures.text()
    panel.show_memory(snapshot(1_000_000_000, cuda=100_000_000, weights=200_000_000))  # a model on CUDA
    assert panel.curve_names() == ["process RSS", "CUDA allocated", "CUDA reserved"]
    assert "CUDA</b>: 100.0 MB allocated, 200.0 MB reserved" in panel.figures.text()
    panel.clear()  # a model switch: nothing of the old model stays
    assert panel.curve_names() == ["process RSS"] and panel.block_states() == [] and len(panel.rss_curve()) == 0
    assert panel.figures.text() == "No model loaded."
    panel.show_memory(snapshot(500_000_000, weights=10_000_000))
    assert "float32 10.0 MB" in panel.weights_label.text() and "200.0 MB" not in panel.figures.text()
    assert panel.curve_names() == ["process RSS"]


def pool(total: int = 728, used: int = 40, size: int = 16) -> MemorySnapshot:
    """The default model's pool (728 blocks of 16): a conversation holding `used` blocks scattered over the
    pool (freed blocks go to the back of the free list), its first 8 served by the prefix cache, and a second
    sample sharing its first 30 (a best-of request); 3 cached prefix blocks nobody holds."""
    conversation = tuple(range(0, 2 * used, 2))  # every other block
    sample = conversation[:30] + (701, 703)
    refs = [0] * total
    for b in conversation + sample:
        refs[b] += 1
    return MemorySnapshot(kv_blocks_total=total, kv_blocks_used=used + 2, kv_blocks_shared=30, kv_blocks_cached_free=3,
                          kv_blocks_free=total - used - 5, kv_block_size=size, kv_bytes_per_block=46_080,
                          kv_tokens=used * size - 5 + 32 * size - 9, block_tables={"4.0": conversation, "4.1": sample},
                          block_refs=tuple(refs), cached_blocks=(720, 721, 722),
                          sequence_tokens={"4.0": used * size - 5, "4.1": 32 * size - 9},
                          prefix_hits={"4.0": 8, "4.1": 8},
                          prefix_blocks=conversation[:-1] + (701,),
                          weight_bytes={"float32": 100_000, "int4": 66_400_000, "int8": 30_100_000})


def test_zoom_shows_every_used_block_readably_and_the_toggle_shows_the_pool(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.show()
    snap = pool()
    panel.show_memory(snap)
    qtbot.waitExposed(panel)
    held = sorted({b for blocks in snap.block_tables.values() for b in blocks} | set(snap.cached_blocks))
    assert panel.block_map.shown == held and len(held) == 45  # the 683 free blocks are left out
    assert panel.block_map.cell_size() >= 12  # was ~3 px with all 728 in the old 120x85 map
    assert "683 free not shown" in panel.show_all.text()
    panel.show_all.setChecked(True)
    assert panel.block_map.shown == list(range(728)) and panel.block_map.cell_size() >= 4
    panel.show_all.setChecked(False)
    assert panel.block_map.shown == held
    # every shown block is where block_at finds it
    s = panel.block_map.cell_size()
    columns = (panel.block_map.width() - 4) // s
    for i, block in enumerate(held):
        centre = (2 + (i % columns) * s + s // 2, 2 + (i // columns) * s + s // 2)
        assert panel.block_map.block_at(QPoint(*centre)) == block


def test_block_tooltip_names_sequence_tokens_references_and_prefix_cache(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    snap = pool()
    panel.show_memory(snap)
    tip = panel.block_map.tooltip
    # block 2: the conversation's 2nd block, shared with sample 1, served by the prefix cache
    assert tip(2).splitlines() == [
        "Block 2: this conversation and sample 1", "this conversation: tokens 16–31 (16 of 16 slots)",
        "sample 1: tokens 16–31 (16 of 16 slots)", "reference count 2 (shared: written once, read by each)",
        "prefix-cache hit: served from an earlier request's blocks, not computed again"]
    last = snap.block_tables["4.0"][-1]  # the conversation's last block: 11 of its 16 slots written
    assert tip(last).splitlines() == ["Block 78: this conversation",
                                      "this conversation: tokens 624–634 (11 of 16 slots)", "reference count 1"]
    assert panel.block_map.filled(last) == 11
    assert "in the prefix cache" in tip(701) and "sample 1: tokens 480–495" in tip(701)
    assert tip(720).startswith("Block 720: cached prefix") and tip(500) == "Block 500: free"
    assert snap.block_refs[2] == 2 and snap.block_refs[last] == 1


def test_sequences_are_named_by_what_they_are():
    keys = ["3.0", "5.0", "5.1", "5.2", "draft"]
    assert [sequence_label(k, keys) for k in keys] == ["request 3", "this conversation", "sample 1", "sample 2",
                                                       "draft"]
    assert sequence_label("2.0", ["2.0", "2.1", "3.0"]) == "request 2 · sample 0"


def test_free_blocks_show_on_light_and_dark_themes(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show_memory(pool())
    dark = QPalette()
    for role, colour in [(QPalette.Base, QColor(37, 37, 38)), (QPalette.Text, QColor(220, 220, 220)),
                         (QPalette.Window, QColor(53, 53, 55)), (QPalette.WindowText, QColor(220, 220, 220))]:
        dark.setColor(role, colour)
    for palette in (QPalette(QColor("white")), dark):
        panel.setPalette(palette)
        background, fill, outline = panel.block_map.free_colours()
        assert background == palette.color(QPalette.Base)
        for colour in (fill, outline):  # clearly apart from the background, not a near-white on white
            assert sum(abs(a - b) for a, b in zip(colour.getRgb()[:3], background.getRgb()[:3])) >= 30
        assert f"color:{outline.name()}'>□" in panel.legend.text()  # the legend's swatch is the map's outline


def test_weights_bar_segments_are_the_snapshots_bytes(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    snap = pool()
    panel.show_memory(snap)
    assert dict(panel.weights_bar.segments) == snap.weight_bytes
    assert [kind for kind, _ in panel.weights_bar.segments] == ["int4", "int8", "float32"]  # largest first
    # word for word the model panel's line for the same bytes (Engine.facts sorts them largest first)
    facts = SimpleNamespace(weight_bytes=tuple(panel.weights_bar.segments))
    assert panel.weights_label.text() == f"<b>Weights</b>: {ModelFacts.weights.fget(facts)}"
    panel.clear()
    assert panel.weights_bar.segments == [] and panel.block_map.shown == []


def test_a_draft_models_own_cache_is_stated_beside_the_map(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    snap = MemorySnapshot(kv_blocks_total=8, kv_blocks_used=1, kv_blocks_free=7, kv_block_size=4,
                          kv_bytes_per_block=1000, block_tables={"1.0": (0,)}, block_refs=(1,) + (0,) * 7,
                          draft_blocks_used=3, draft_blocks_total=10, draft_bytes_per_block=2_000_000)
    panel.show_memory(snap)
    assert "Draft model's own KV cache</b>: 3 of 10 blocks, 6.0 MB" in panel.figures.text()
    panel.show_memory(MemorySnapshot(kv_blocks_total=8, kv_blocks_free=8, kv_block_size=4, block_refs=(0,) * 8))
    assert "Draft" not in panel.figures.text()


def test_snapshot_axis_has_whole_numbers_only_and_the_legend_sits_bottom_right(qtbot):
    from widgets.memory_panel import CountAxis, MemoryPanel

    panel = MemoryPanel()
    qtbot.addWidget(panel)
    axis = panel.curves.getAxis("bottom")
    assert isinstance(axis, CountAxis)
    for low, high in ((0, 2), (0, 1), (0, 7), (3, 250)):
        ticks = [v for _, values in axis.tickValues(low, high, 300) for v in values]
        assert ticks and all(float(v).is_integer() for v in ticks), (low, high, ticks)
        assert len(ticks) == len(set(ticks))
    legend = panel.curves.plotItem.legend
    assert legend.opts["offset"][0] < 0 and legend.opts["offset"][1] < 0  # anchored to the bottom right
