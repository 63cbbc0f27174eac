"""The Requests panel: requests served over HTTP as they arrive (time, endpoint, prompt preview, tokens,
status), and the selected one's prompt and generated tokens, read-only, each token a link. It only draws
records and says what was chosen (request_selected, step_clicked); app/serving.py feeds it and shows the
chosen request in the other panels. The newest KEPT requests are kept (their steps hold stored logits)."""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QSplitter, QTextBrowser, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from engine.records import PromptRecord, RequestDone, StepRecord

KEPT = 100
PREVIEW_CHARS = 80
COLUMNS = ("Time", "Endpoint", "Prompt", "Tokens", "Status")
MARKUP = re.compile(r"^<[^<>\s]{1,40}>$|^<\|.*\|>$")  # template tokens: <|im_start|>, <s>, ...


@dataclass
class ServedRequest:
    prompt: PromptRecord
    row: QTreeWidgetItem
    steps: list[StepRecord] = field(default_factory=list)  # sample 0's, in order (the view shows one sample)
    tokens: int = 0  # generated over every sample
    status: str = "streaming"


def prompt_preview(texts) -> str:
    """The prompt's words without template markup, whitespace run together; its end is what is new."""
    words = " ".join("".join(t for t in texts if not MARKUP.match(t.strip())).split())
    return words if len(words) <= PREVIEW_CHARS else "…" + words[-PREVIEW_CHARS:]


def status_of(done: RequestDone) -> str:
    if done.error:
        return "error"
    reasons = [r.finish_reason for r in done.results]
    return "cancelled" if not reasons or all(r == "cancelled" for r in reasons) else "done"


class RequestsPanel(QWidget):
    request_selected = Signal(int)  # request id
    step_clicked = Signal(object)  # a StepRecord of the request shown

    def __init__(self, parent=None):
        super().__init__(parent)
        self._requests: OrderedDict[int, ServedRequest] = OrderedDict()
        self._shown: int | None = None  # the request in the token view
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.hint = QLabel("Requests served over HTTP appear here (Server → Serve on localhost). "
                           "Select one to see its tokens; click a token to show it in the panels.")
        self.hint.setWordWrap(True)
        self.list = QTreeWidget()
        self.list.setHeaderLabels(COLUMNS)
        self.list.setRootIsDecorated(False)
        self.list.setSelectionMode(QAbstractItemView.SingleSelection)
        header = self.list.header()
        header.setStretchLastSection(False)
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        self.list.itemSelectionChanged.connect(self._on_selection)
        self.tokens = QTextBrowser()
        self.tokens.setOpenLinks(False)
        self.tokens.anchorClicked.connect(self._on_anchor)

    def _layout(self) -> None:
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.list)
        split.addWidget(self.tokens)
        column = QVBoxLayout(self)
        column.setContentsMargins(2, 2, 2, 2)
        column.addWidget(self.hint)
        column.addWidget(split, 1)

    # -- records in -----------------------------------------------------------------------------
    def start(self, prompt: PromptRecord, endpoint: str = "", at: float | None = None) -> None:
        """A request arrived: a row at the top, streaming."""
        stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if at is None else at))
        row = QTreeWidgetItem([stamp, endpoint.rsplit("/v1/", 1)[-1], prompt_preview(prompt.token_texts), "0",
                               "streaming"])
        row.setData(0, Qt.UserRole, prompt.request_id)
        row.setToolTip(2, "".join(prompt.token_texts)[-2000:])
        self.list.insertTopLevelItem(0, row)
        self._requests[prompt.request_id] = ServedRequest(prompt, row)
        while len(self._requests) > KEPT:
            _, oldest = self._requests.popitem(last=False)
            self.list.takeTopLevelItem(self.list.indexOfTopLevelItem(oldest.row))

    def add_steps(self, records) -> None:
        touched: dict[int, list[StepRecord]] = {}
        for r in records:
            request = self._requests.get(r.request_id)
            if request is None:
                continue
            request.tokens += 1
            if r.seq_index == 0:
                request.steps.append(r)
                touched.setdefault(r.request_id, []).append(r)
        for rid in touched:
            request = self._requests[rid]
            request.row.setText(3, str(request.tokens))
        if self._shown in touched:
            first = len(self._requests[self._shown].steps) - len(touched[self._shown])
            self._append_tokens(touched[self._shown], first)

    def finish(self, done: RequestDone) -> None:
        request = self._requests.get(done.request_id)
        if request is None:
            return
        request.status = status_of(done)
        request.row.setText(4, request.status)
        request.row.setToolTip(4, done.error or ", ".join(r.finish_reason for r in done.results))

    def clear(self) -> None:
        self._requests.clear()
        self._shown = None
        self.list.clear()
        self.tokens.clear()

    # -- what is shown --------------------------------------------------------------------------
    def request(self, request_id: int) -> tuple[PromptRecord, tuple[StepRecord, ...]] | None:
        found = self._requests.get(request_id)
        return None if found is None else (found.prompt, tuple(found.steps))

    def request_ids(self) -> list[int]:
        """Newest first, as listed."""
        return [self.list.topLevelItem(i).data(0, Qt.UserRole) for i in range(self.list.topLevelItemCount())]

    def status(self, request_id: int) -> str | None:
        found = self._requests.get(request_id)
        return None if found is None else found.status

    def select_request(self, request_id: int) -> None:
        found = self._requests.get(request_id)
        if found is not None:
            self.list.setCurrentItem(found.row)

    def click_step(self, index: int) -> None:
        """The shown request's step `index` chosen (a click on its token)."""
        self._on_anchor(QUrl(str(index)))

    def _on_selection(self) -> None:
        rows = self.list.selectedItems()
        if not rows:
            return
        rid = rows[0].data(0, Qt.UserRole)
        self._shown = rid
        request = self._requests[rid]
        self.tokens.clear()
        grey = QTextCharFormat()
        grey.setForeground(self.palette().placeholderText())
        self.tokens.textCursor().insertText("".join(request.prompt.token_texts), grey)
        self._append_tokens(request.steps, 0)
        self.request_selected.emit(rid)

    def _append_tokens(self, steps, first: int) -> None:
        cursor = self.tokens.textCursor()
        cursor.movePosition(QTextCursor.End)
        for i, step in enumerate(steps):  # inserted as text: an anchor's spaces and newlines are kept as they are
            link = QTextCharFormat()
            link.setAnchor(True)
            link.setAnchorHref(str(first + i))
            link.setForeground(self.palette().link())
            cursor.insertText(step.text or "·", link)  # "": a UTF-8 character still incomplete

    def _on_anchor(self, url: QUrl) -> None:
        request = self._requests.get(self._shown) if self._shown is not None else None
        index = int(url.toString()) if url.toString().isdigit() else -1
        if request is not None and 0 <= index < len(request.steps):
            self.step_clicked.emit(request.steps[index])
