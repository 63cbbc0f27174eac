"""How a conversation becomes the model's prompt: chat mode (through a chat template: the model's own, a
built-in one, or the user's edit, its source shown) or plain completion (the text continued as it is),
and what happens when the conversation outgrows the context. Emits the choice as Turn's options; never
renders a template itself: the app has the worker render one and hands back the problem, if any."""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QComboBox, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

MODES = [("chat", "Chat: messages go through a chat template"),
         ("completion", "Plain completion: no template (base models)")]
OVERFLOW = [("fail", "Refuse the message"), ("drop_oldest", "Drop the oldest turns")]
MODEL, EDITED = "model", "edited"  # the choices around the built-in templates
# What each built-in template is, for the line under the choice (a template the engine adds later shows bare).
ABOUT = {
    MODEL: "The template the model was trained with, from its tokenizer files.",
    "ChatML": "<|im_start|>role … <|im_end|>: Qwen, SmolLM, many fine-tunes.",
    "Llama 3": "<|start_header_id|>role<|end_header_id|> … <|eot_id|>: Llama 3 and its fine-tunes.",
    "Gemma": "<start_of_turn>user|model … <end_of_turn>: no system role, so the system prompt opens the first "
             "user turn.",
    "none": "The messages' text run together, no roles and no BOS.",
    EDITED: "Your own template, rendered in the same sandbox as the others.",
}
COMPLETION_NOTE = ("Completion sends no template: the model continues the conversation's text as it is "
                   "(every message's text but the system prompt's, run together), after its BOS if it uses one.")
EDIT_PAUSE_MS = 400  # an edited template is announced once typing pauses, not at every key


class TemplatePanel(QWidget):
    options_changed = Signal(dict)  # options(): mode, template, overflow (as app/turn.py's Turn takes them)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._model_source = ""
        self._builtins: dict[str, str] = {}
        self._wanted_choice = MODEL  # a restored choice whose template has not arrived yet
        self._setup_ui()
        self._layout()
        self._show_choice()

    def _setup_ui(self) -> None:
        self.mode = QComboBox()
        for key, text in MODES:
            self.mode.addItem(text, key)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.mode_note = QLabel(COMPLETION_NOTE, wordWrap=True)
        self.choice = QComboBox()
        self.choice.addItem("The model's own", MODEL)
        self.choice.addItem("Edited…", EDITED)
        self.choice.currentIndexChanged.connect(self._choice_changed)
        self.about = QLabel(wordWrap=True)
        self.source = QPlainTextEdit()
        self.source.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.source.setLineWrapMode(QPlainTextEdit.WidgetWidth)  # a dock is narrow: no sideways scrolling
        self.source.textChanged.connect(self._source_edited)
        self._edited = ""  # the editor's text, kept while another template is shown
        self.problem = QLabel(wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
        self.problem.setStyleSheet("color: #d03030;")
        self.problem.setVisible(False)
        self.overflow = QComboBox()
        for key, text in OVERFLOW:
            self.overflow.addItem(text, key)
        self.overflow.setToolTip("Dropping keeps the system prompt and the newest message; whole turns go, "
                                 "oldest first, until the prompt leaves room for the reply")
        self.overflow.currentIndexChanged.connect(self._emit)
        self._edit_timer = QTimer(self, singleShot=True, interval=EDIT_PAUSE_MS)
        self._edit_timer.timeout.connect(self._emit)

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Mode</b>"))
        layout.addWidget(self.mode)
        layout.addWidget(self.mode_note)
        layout.addWidget(QLabel("<b>Chat template</b>"))
        layout.addWidget(self.choice)
        layout.addWidget(self.about)
        layout.addWidget(self.source, 1)
        layout.addWidget(self.problem)
        layout.addWidget(QLabel("<b>When the conversation is longer than the context</b>", wordWrap=True))
        layout.addWidget(self.overflow)

    # -- what the app gives -------------------------------------------------------------------
    def set_model_template(self, source: str) -> None:
        """The loaded model's own template source (or the engine's note that it has none)."""
        self._model_source = source
        self._show_choice()

    def set_builtin_templates(self, templates: dict) -> None:
        """The templates offered besides the model's own: name -> source (Engine.builtin_templates)."""
        wanted = self._choice_key() if self._choice_key() != MODEL else self._wanted_choice
        self._builtins = dict(templates)
        self.choice.blockSignals(True)
        while self.choice.count() > 2:
            self.choice.removeItem(1)
        for i, name in enumerate(self._builtins, start=1):
            self.choice.insertItem(i, name if name != "none" else "None (text only)", name)
        self._select(wanted)
        self.choice.blockSignals(False)
        self._show_choice()
        self._emit()  # a built-in choice restored before its source was known has one now

    def show_problem(self, text: str) -> None:
        """Why the chosen template does not render the conversation ("" when it does)."""
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    # -- what the app reads -------------------------------------------------------------------
    def options(self) -> dict:
        """Turn's mode, template (a source; None: the model's own) and overflow."""
        key = self._choice_key()
        template = self._edited if key == EDITED else self._builtins.get(key)
        return {"mode": self.mode.currentData(), "template": template, "overflow": self.overflow.currentData()}

    def state(self) -> dict[str, str]:
        """What to keep between runs (app/settings.py): the choice by name and the edited text."""
        return {"mode": self.mode.currentData(), "choice": self._choice_key(), "edited": self._edited,
                "overflow": self.overflow.currentData()}

    def restore(self, state: dict) -> None:
        """A saved state(); unknown values are ignored."""
        for box, key in ((self.mode, "mode"), (self.overflow, "overflow")):
            index = box.findData(state.get(key))
            if index >= 0:
                box.setCurrentIndex(index)
        if isinstance(state.get("edited"), str):
            self._edited = state["edited"]
        if isinstance(state.get("choice"), str):
            self._wanted_choice = state["choice"]
            self._select(state["choice"])
        self._show_choice()

    # -- inside -------------------------------------------------------------------------------
    def _choice_key(self) -> str:
        return self.choice.currentData()

    def _select(self, key: str) -> None:
        index = self.choice.findData(key)
        if index >= 0:
            self.choice.setCurrentIndex(index)

    def _mode_changed(self) -> None:
        self._show_choice()
        self._emit()

    def _choice_changed(self) -> None:
        key = self._choice_key()
        self._wanted_choice = key
        if key == EDITED and not self._edited.strip():  # start from the template shown before
            self._edited = self.source.toPlainText()
        self.show_problem("")
        self._show_choice()
        self._emit()

    def _show_choice(self) -> None:
        key, chat = self._choice_key(), self.mode.currentData() == "chat"
        self.mode_note.setVisible(not chat)
        for widget in (self.choice, self.about, self.source):
            widget.setEnabled(chat)
        self.about.setText(ABOUT.get(key, ""))
        if key == EDITED:
            text = self._edited
        elif key == MODEL:
            text = self._model_source or "(no model loaded yet)"
        else:
            text = self._builtins.get(key, "")
        self.source.blockSignals(True)
        if self.source.toPlainText() != text:
            self.source.setPlainText(text)
        self.source.blockSignals(False)
        self.source.setReadOnly(key != EDITED)
        self.source.setToolTip("" if key == EDITED else "Read-only: choose “Edited…” to change a copy of it")

    def _source_edited(self) -> None:
        if self._choice_key() == EDITED:
            self._edited = self.source.toPlainText()
            self._edit_timer.start()

    def _emit(self) -> None:
        self.options_changed.emit(self.options())
