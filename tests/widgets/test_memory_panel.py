"""The memory panel draws the block map and curves from real MemorySnapshots."""
from engine.records import MemorySnapshot
from widgets.memory_panel import MemoryPanel


def snapshot(rss: int) -> MemorySnapshot:
    refs = [2, 2, 1, 1, 0, 0, 0, 0, 1, 0]
    return MemorySnapshot(kv_blocks_total=10, kv_blocks_used=5, kv_blocks_shared=2, kv_blocks_cached_free=1,
                          kv_blocks_free=4, kv_block_size=16, kv_bytes_per_block=1024, kv_tokens=70,
                          kv_slots_filled=60, kv_contiguous_bytes=2 * 8192 * 64,
                          block_tables={"0.0": (0, 1, 2), "0.1": (0, 1, 3), "1.0": (8,)}, block_refs=tuple(refs),
                          cached_blocks=(5,), weight_bytes={"float32": 538 << 20}, process_rss=rss)


def test_block_map_matches_the_snapshot_and_curves_grow(qtbot):
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show_memory(snapshot(1 << 30))
    states = panel.block_states()
    assert states.count("shared") == 2 and states.count("cached") == 1 and states.count("free") == 4
    assert states[2] == "used:0.0" and states[3] == "used:0.1" and states[8] == "used:1.0"
    panel.show_memory(snapshot(1 << 30 | 1 << 20))
    assert list(panel.rss_curve()) == [1024.0, 1025.0]
    text = panel.figures.text()
    assert "5 of 10 blocks" in text and "contiguous" in text and "float32 538.0 MB" in text
