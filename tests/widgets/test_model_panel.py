"""The model panel turns user gestures into open requests carrying the chosen options."""
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from engine.records import LoadOptions, ModelFacts
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
    assert path.endswith("a.gguf") and isinstance(options, LoadOptions)
    assert options == LoadOptions(device="cpu", dtype="bfloat16", rope_scaling="yarn:4", context_length=16384,
                                  quant="int4-g32", kv_budget_gib=0.5, kv_block_size=16,
                                  threads=0)  # the window always says: auto is one thread per physical core
    panel.rope.setCurrentText("from model")
    assert panel.options().rope_scaling is None
    facts = ModelFacts(name="tiny", path=str(tmp_path), architecture="llama", parameters=1234567, layers=2, heads=4,
                       kv_heads=2, head_dim=8, experts=0, experts_per_token=0, dense_layers=(), context=256,
                       vocab=100, dtype="float32", device="cpu", rope="default",
                       weight_bytes=(("int4", 56_600_000), ("float32", 28_300_000)), supports_tools=False)
    panel.show_model_info(facts)
    labels = panel.fact_labels
    assert labels["parameters"].text() == "1,234,567" and labels["name"].text() == "tiny"
    assert labels["experts"].text() == "0" and labels["weights"].text() == "int4 56.6 MB + float32 28.3 MB"


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


def test_cancel_in_the_open_dialog_ends_it_and_a_folder_has_its_own_button(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    panel = ModelPanel()
    qtbot.addWidget(panel)
    asked, opened = [], []
    panel.open_requested.connect(lambda path, options: opened.append(path))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: asked.append("file") or ("", ""))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: asked.append("folder") or "")
    panel.open_button.click()  # the user cancels the file chooser
    assert asked == ["file"] and opened == []  # no second dialog, nothing opened
    folder = str(tmp_path / "hf-model")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: asked.append("folder") or folder)
    panel.folder_button.click()
    assert asked == ["file", "folder"] and opened == [folder]
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "m.gguf"), "GGUF"))
    panel.choose_model()
    assert opened == [folder, str(tmp_path / "m.gguf")]


def test_cpu_threads_reach_the_load_options(qtbot):
    panel = ModelPanel()
    qtbot.addWidget(panel)
    assert panel.options().threads == 0 and panel.threads.text() == "auto (physical cores)"
    panel.threads.setValue(6)
    assert panel.options().threads == 6 and panel.options() == LoadOptions(threads=6)


def test_the_rope_factor_is_off_while_the_model_s_own_scaling_is_used(qtbot):
    """Seen at 1366x768: "from model" beside a live 2.00 read as the model's own factor (gpt-oss's is 4)."""
    panel = ModelPanel()
    qtbot.addWidget(panel)
    assert panel.rope.currentText() == "from model" and not panel.rope_factor.isEnabled()
    panel.rope.setCurrentText("yarn")
    assert panel.rope_factor.isEnabled()
    panel.rope.setCurrentText("from model")
    assert not panel.rope_factor.isEnabled()
