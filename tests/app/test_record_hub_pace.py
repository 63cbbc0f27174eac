"""The panels' redraw period follows what drawing costs the GUI thread (app/record_hub.py): a cheap tick
keeps 30 Hz, a costly one slows the panels, never the model, within bounds."""
from app.record_hub import GUI_SHARE, REDRAW_MS, SLOWEST_MS, next_interval


def test_cheap_drawing_keeps_the_fastest_tick():
    assert next_interval(REDRAW_MS, gui_cpu_s=0.0005, wall_s=0.033) == REDRAW_MS


def test_costly_drawing_stretches_the_tick_to_the_share_smoothly_and_within_bounds():
    cost = 0.010  # 10 ms of GUI-thread CPU per tick: at the share, a tick every 200 ms
    interval, seen = REDRAW_MS, []
    for _ in range(12):
        interval = next_interval(interval, cost, interval / 1000)
        seen.append(interval)
    assert seen == sorted(seen) and seen[0] < 1000 * cost / GUI_SHARE  # smoothed: one slow tick is not believed at once
    assert abs(seen[-1] - 1000 * cost / GUI_SHARE) < 1
    assert next_interval(REDRAW_MS, 1.0, 0.033) == SLOWEST_MS
    assert next_interval(200, 0.0, 0.0) == 200  # no time passed: no evidence
