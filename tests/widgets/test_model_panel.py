"""The model panel turns user gestures into open requests carrying the chosen options."""
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from widgets.model_panel import ModelPanel


def test_options_recent_and_facts(qtbot, tmp_path):
    panel = ModelPanel()
    qtbot.addWidget(panel)
    panel.device.setCurrentText("cpu")
    panel.dtype.setCurrentText("bfloat16")
    panel.rope.setCurrentText("yarn")
    panel.rope_factor.setValue(4)
    panel.context.setValue(16384)
    panel.quant.setCurrentText("int4-g32")
    panel.set_recent([str(tmp_path / "a.gguf")])
    with qtbot.waitSignal(panel.open_requested) as blocker:
        panel.request_open(panel.recent.item(0).text())
    path, options = blocker.args
    assert path.endswith("a.gguf") and options["device"] == "cpu" and options["dtype"] == "bfloat16"
    assert options["rope_scaling"] == "yarn:4" and options["kv_block_size"] == 16
    assert options["context_length"] == 16384 and options["quant"] == "int4-g32"
    panel.show_model_info({"name": "tiny", "parameters": 1234567, "experts": 0})
    assert panel.facts["parameters"].text() == "1,234,567" and panel.facts["name"].text() == "tiny"


def test_dropping_a_gguf_file_opens_it(qtbot, tmp_path):
    panel = ModelPanel()
    qtbot.addWidget(panel)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(model))])
    event = QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    with qtbot.waitSignal(panel.open_requested) as blocker:
        panel.dropEvent(event)
    assert blocker.args[0] == str(model)
