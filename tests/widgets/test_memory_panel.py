"""The memory panel draws the block map and curves from real MemorySnapshots."""
from types import SimpleNamespace

from engine.records import MemorySnapshot, ModelFacts
from widgets.memory_panel import MemoryPanel


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
    assert "5 of 10 blocks" in text and "contiguous" in text and "float32 538.0 MB" in text
    # the same figure as the model panel's weights line, for the same bytes
    assert ModelFacts.weights.fget(SimpleNamespace(weight_bytes=(("float32", 538_000_000),))) == "float32 538.0 MB"
    legend = panel.legend.text()
    assert "request 0 · sample 0" in legend and "request 0 · sample 1" in legend and "request 1<" in legend + "<"
    assert "seq" not in legend and "□</span> free" in legend  # the free swatch: an outline, seen on light themes


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
    assert "float32 10.0 MB" in panel.figures.text() and "200.0 MB" not in panel.figures.text()
    assert panel.curve_names() == ["process RSS"]
