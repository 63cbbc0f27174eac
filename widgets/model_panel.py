"""Opening a model and seeing what it is: a file chooser and a folder chooser, recent models, drag and
drop, load options (device, dtype, weight quantization, RoPE scaling, KV budget and block size, CPU
threads), progress, and the loaded model's facts. Emits open requests; never loads anything itself."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout,
                               QLabel, QListWidget, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.records import LoadOptions, ModelFacts

# The facts shown, in order: (key of its label in ModelPanel.fact_labels, row title, the value). Getters, not
# field names, so a misspelt fact fails at once instead of showing "—".
FACTS = [("name", "Model", lambda f: f.name), ("architecture", "Architecture", lambda f: f.architecture),
         ("parameters", "Parameters", lambda f: f.parameters), ("layers", "Layers", lambda f: f.layers),
         ("heads", "Heads", lambda f: f.heads), ("kv_heads", "KV heads",
          lambda f: f"{f.kv_heads} from a {f.kv_latent}-value latent (MLA)" if f.kv_latent else f.kv_heads),
         ("experts", "Experts", lambda f: f.experts),
         ("experts_per_token", "Experts/token", lambda f: f.experts_per_token),
         ("context", "Context", lambda f: f.context), ("dtype", "Dtype", lambda f: f.dtype),
         ("weights", "Weights", lambda f: f.weights), ("device", "Device", lambda f: f.device),
         ("rope", "RoPE scaling", lambda f: f.rope)]

# engine/quant's load modes, with what each means to someone choosing
QUANT_MODES = [("auto", "GGUF Q8_0/Q4_0/Q4_1 weights stay packed on the CPU; float otherwise"),
               ("none", "all weights in the chosen dtype (dequantizes a GGUF)"),
               ("int8", "int8 per output channel: ~1/4 of fp32, near-lossless"),
               ("int4-g32", "int4 in groups of 32: ~1/6 of fp32"),
               ("int4-g64", "int4 in groups of 64"),
               ("int4-g128", "int4 in groups of 128: smallest, least exact")]


BUILTIN_MOE_PATH = "builtin:moe"  # understood by app/engine_worker.py


class ModelPanel(QWidget):
    open_requested = Signal(str, object)  # path ("" = the default model), LoadOptions
    cancel_requested = Signal()
    rope_changed = Signal(object)  # the RoPE choice ('TYPE:FACTOR', or None: the model's own), before any load

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.open_button = QPushButton("Open model file…")
        self.open_button.clicked.connect(self.choose_model)
        self.folder_button = QPushButton("Open model folder…")
        self.folder_button.setToolTip("A Hugging Face model folder (config.json and safetensors)")
        self.folder_button.clicked.connect(self.choose_folder)
        self.default_button = QPushButton("Default model")
        self.default_button.clicked.connect(lambda: self.request_open(""))
        # The default model split into 8 experts (engine/moefy/build.py): built and cached on first use.
        self.moe_button = QPushButton("SmolLM2-135M-MoE 8×top-2")
        self.moe_button.setToolTip("A mixture-of-experts made from the default model (MoEfication); "
                                   "the first time it is built, which takes a few minutes")
        self.moe_button.clicked.connect(lambda: self.request_open(BUILTIN_MOE_PATH))
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.dtype = QComboBox()
        self.dtype.addItems(["auto", "float32", "bfloat16", "float16"])
        self.quant = QComboBox()
        for i, (mode, meaning) in enumerate(QUANT_MODES):
            self.quant.addItem(mode)
            self.quant.setItemData(i, meaning, Qt.ToolTipRole)
        self.quant.setToolTip("How the weights are held in memory (engine/quant); applied when a model is opened")
        self.rope = QComboBox()
        self.rope.addItems(["from model", "linear", "dynamic", "yarn", "llama3"])
        self.rope_factor = QDoubleSpinBox(minimum=1.0, maximum=32.0, value=2.0, singleStep=0.5)
        # The RoPE panel draws what a choice does before the model is reopened with it.
        self.rope.currentIndexChanged.connect(lambda *_: self.rope_changed.emit(self.rope_spec()))
        # "from model" with a live factor beside it read as the model's own factor (2.00 beside gpt-oss's YaRN ×4)
        self.rope_factor.setEnabled(False)
        self.rope_factor.setToolTip("The factor of the scaling chosen on the left; the model's own is in the RoPE panel")
        self.rope.currentIndexChanged.connect(lambda index: self.rope_factor.setEnabled(index > 0))
        self.rope_factor.valueChanged.connect(lambda *_: self.rope_changed.emit(self.rope_spec()))
        self.kv_budget = QDoubleSpinBox(minimum=0.05, maximum=64.0, value=0.5, singleStep=0.25, suffix=" GiB")
        self.context = QSpinBox(minimum=0, maximum=1 << 20, singleStep=1024, specialValueText="model's own")
        self.block_size = QComboBox()
        self.block_size.addItems(["8", "16", "32"])
        self.block_size.setCurrentText("16")
        self.threads = QSpinBox(minimum=0, maximum=256, specialValueText="auto (physical cores)")
        self.threads.setToolTip("CPU threads for the model's matmuls; auto uses one per physical core. "
                                "Applied when a model is opened")
        self.recent = QListWidget()
        self.recent.setMaximumHeight(90)
        self.recent.itemDoubleClicked.connect(lambda item: self.request_open(item.text()))
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        # Word-wrapped and selectable: a long model name or weights line wraps instead of widening the dock.
        self.fact_labels = {key: QLabel("—", wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
                            for key, _, _ in FACTS}

    def _layout(self) -> None:
        buttons = QGridLayout()  # not one row: a row of four buttons would set the dock's minimum width
        buttons.addWidget(self.open_button, 0, 0)
        buttons.addWidget(self.folder_button, 0, 1)
        buttons.addWidget(self.default_button, 1, 0, 1, 2)
        buttons.addWidget(self.moe_button, 2, 0, 1, 2)
        options = QFormLayout()
        options.setRowWrapPolicy(QFormLayout.WrapLongRows)  # a narrow dock puts labels above their fields
        options.addRow("Device", self.device)
        options.addRow("Dtype", self.dtype)
        options.addRow("Weights", self.quant)
        rope = QHBoxLayout()
        rope.addWidget(self.rope)
        rope.addWidget(self.rope_factor)
        options.addRow("RoPE scaling", rope)
        options.addRow("Context length", self.context)
        options.addRow("KV budget", self.kv_budget)
        options.addRow("KV block size", self.block_size)
        options.addRow("CPU threads", self.threads)
        facts = QFormLayout()
        for key, title, _ in FACTS:
            facts.addRow(title, self.fact_labels[key])
        recent = QLabel("Recent (double-click to open; or drop a .gguf file or a folder here)", wordWrap=True)
        progress = QHBoxLayout()
        progress.addWidget(self.progress, 1)
        progress.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(options)
        layout.addWidget(recent)
        layout.addWidget(self.recent)
        layout.addLayout(progress)
        layout.addLayout(facts)
        layout.addStretch(1)

    # -- API ----------------------------------------------------------------------------------
    def rope_spec(self) -> str | None:
        """The RoPE override as LoadOptions.rope_scaling takes it; None: the model's own scaling."""
        return f"{self.rope.currentText()}:{self.rope_factor.value():g}" if self.rope.currentIndex() > 0 else None

    def options(self) -> LoadOptions:
        return LoadOptions(device=self.device.currentText(), dtype=self.dtype.currentText(),
                           quant=self.quant.currentText(), rope_scaling=self.rope_spec(), kv_budget_gib=self.kv_budget.value(),
                           kv_block_size=int(self.block_size.currentText()), context_length=self.context.value(),
                           threads=self.threads.value())

    def request_open(self, path: str) -> None:
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.progress.setValue(0)
        self.open_requested.emit(path, self.options())

    def choose_model(self) -> None:
        """A GGUF file; Cancel ends it (a folder has its own button: choose_folder)."""
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.request_open(path)

    def choose_folder(self) -> None:
        """A Hugging Face model folder."""
        path = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model folder")
        if path:
            self.request_open(path)

    def set_recent(self, paths: list[str]) -> None:
        self.recent.clear()
        self.recent.addItems(paths)

    def show_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def show_model_info(self, facts: ModelFacts) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        for key, _, value_of in FACTS:
            value = value_of(facts)
            self.fact_labels[key].setText(f"{value:,}" if isinstance(value, int) else str(value or "—"))

    def load_finished(self) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)

    # -- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            if path.is_dir() or path.suffix.lower() == ".gguf":
                self.request_open(str(path))
                event.acceptProposedAction()
                return
