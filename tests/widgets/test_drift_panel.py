"""The quantization drift panel draws a QuantDriftView as given: KL bars, disagreement ticks, the summary, both
top-N for a clicked column; and walks its states (not computed, computing, shown, not quantized)."""
import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import Qt

from engine.records import QuantDriftView
from widgets.drift_panel import QuantDriftPanel, quantized_kind

TEXTS = {0: " the", 1: " a", 2: "\n", 3: " Paris", 4: " it", 5: " internationalization"}


def drift_view(n: int = 300, top_n: int = 3, start: int = 10) -> QuantDriftView:
    rng = np.random.default_rng(0)
    kl = rng.lognormal(np.log(0.01), 1.0, n)
    agree = rng.random(n) > 0.1
    ids = np.array([rng.permutation(6)[:top_n] for _ in range(n)], dtype=np.int64).reshape(n, top_n)
    probs = np.sort(rng.dirichlet(np.ones(top_n + 1), n), axis=1)[:, ::-1][:, :top_n].astype(np.float32)
    return QuantDriftView(start=start, next_texts=tuple(TEXTS[int(i)] for i in ids[:, 0]), kl=tuple(kl.tolist()),
                          top1_agree=tuple(bool(a) for a in agree), mean_kl=float(kl.mean()) if n else 0.0,
                          agreement=float(agree.mean()) if n else 1.0, float_top_ids=ids, float_top_probs=probs,
                          quant_top_ids=ids[:, ::-1].copy(), quant_top_probs=probs[:, ::-1] * 0.9, texts=TEXTS,
                          quantization="Q4_1 67.7 MB + float32 28.3 MB", reference_dtype="float32",
                          reference_bytes=538_000_000)


@pytest.fixture
def panel(qtbot):
    panel = QuantDriftPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_strip_heights_marks_and_summary_are_the_views(panel):
    view = drift_view()
    panel.show_view(view)
    x = np.arange(len(view.kl)) + view.start + 1  # column i predicts the token at start + i + 1
    np.testing.assert_array_equal(panel.kl_bars.opts["x"], x)
    np.testing.assert_array_equal(panel.kl_bars.opts["height"], np.array(view.kl))
    differs = ~np.array(view.top1_agree)
    np.testing.assert_array_equal(panel.disagree_marks.data["x"], x[differs])
    np.testing.assert_array_equal(panel.overview_marks.data["x"], x[differs])
    red = [pg.mkBrush(b).color().name() == pg.mkColor("#e74c3c").name() for b in panel.kl_bars.opts["brushes"]]
    assert red == list(differs)
    assert panel.summary.text() == (f"mean KL {view.mean_kl:.4f} nats · top-1 agreement {view.agreement:.1%} "
                                    f"({int(differs.sum()):,} of {len(view.kl):,} differ)")
    assert panel.header.text() == "<b>Quantization drift: Q4_1 vs float32 reference</b>"
    assert panel.memory.text() == "float reference: 538 MB in memory"
    low, high = panel.strip.getViewBox().viewRange()[0]  # the latest columns, scrollable to the rest
    assert high >= x[-1] and low > x[0] and panel.region.getRegion() == pytest.approx((low, high), abs=1e-6)


def test_clicking_a_column_shows_both_top_n_with_their_texts(panel, qtbot):
    view = drift_view()
    panel.show_view(view)
    box = panel.strip.getViewBox()
    i = len(view.kl) - 7
    scene = box.mapViewToScene(pg.Point(view.start + i + 1 + 0.2, 0))
    click = panel.strip.mapFromScene(scene)
    with qtbot.waitSignal(panel.column_selected) as blocker:
        qtbot.mouseClick(panel.strip.viewport(), Qt.LeftButton, pos=click)
    assert blocker.args == [view.start + i + 1]
    for top, ids, probs in ((panel.float_top, view.float_top_ids, view.float_top_probs),
                            (panel.quant_top, view.quant_top_ids, view.quant_top_probs)):
        assert [text for text, _, _ in top.rows] == [TEXTS[int(t)] for t in ids[i]]
        assert [p for _, p, _ in top.rows] == pytest.approx(probs[i].tolist())
        np.testing.assert_allclose(top.bars.opts["width"], probs[i])
        assert [came for _, _, came in top.rows] == [TEXTS[int(t)] == view.next_texts[i] for t in ids[i]]
    assert panel.cursors[0].value() == view.start + i + 1
    assert f"KL {view.kl[i]:.4f} nats" in panel.column_title.text()
    assert panel.float_top.title.text() == "float (float32)" and panel.quant_top.title.text() == "quantized (Q4_1)"


def test_release_compute_and_states(panel, qtbot):
    assert panel.pages.currentIndex() == 0 and panel.compute_button.isVisible()
    with qtbot.waitSignal(panel.compute_requested):
        panel.compute_button.click()
    panel.show_computing()
    assert panel.busy.isVisible() and not panel.compute_button.isEnabled()
    panel.show_view(drift_view())
    assert panel.pages.currentIndex() == 1
    with qtbot.waitSignal(panel.release_requested):
        panel.release_button.click()
    assert "released" in panel.memory.text() and not panel.release_button.isEnabled()
    with qtbot.waitSignal(panel.compute_requested):
        panel.recompute_button.click()
    panel.show_computing()  # recomputing keeps the old strip on screen
    assert panel.pages.currentIndex() == 1 and not panel.recompute_button.isEnabled()
    panel.set_not_quantized(True)
    assert panel.pages.currentIndex() == 0 and "not quantized" in panel.message.text()
    assert not panel.compute_button.isVisible()
    panel.set_not_quantized(False)
    assert panel.compute_button.isVisible() and "Compares" in panel.message.text()
    panel.show_view(drift_view(n=0))
    assert panel.pages.currentIndex() == 0 and "at least two tokens" in panel.message.text()


def test_hover_names_the_column_and_the_overview_scrolls_the_strip(panel):
    view = drift_view()
    panel.show_view(view)
    box = panel.strip.getViewBox()
    i = len(view.kl) - 3
    panel._hover(box.mapViewToScene(pg.Point(view.start + i + 1, 0)))
    assert panel.strip.toolTip().startswith(f"position {view.start + i + 1:,} → ")
    panel.region.setRegion((50, 100))
    assert box.viewRange()[0] == pytest.approx([50, 100], abs=1e-6)


def test_quantized_kind_drops_the_sizes():
    assert quantized_kind("int4 56.6 MB + float32 28.3 MB") == "int4"
    assert quantized_kind("Q4_1 + float32") == "Q4_1"
    assert quantized_kind("Q8_0 1,234.5 MB") == "Q8_0"
