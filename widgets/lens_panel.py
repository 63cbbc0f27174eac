"""The logit lens for the selected token: what the model would predict if it stopped after each block
(the residual stream read through the final norm and the LM head), as a layers × positions heatmap of
each cell's top-1 token and its probability, with the selected token's probability across layers beside
it. Draws LogitLensView records only; the app computes them by replay when `wanted` says so."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QGraphicsRectItem, QHBoxLayout, QLabel, QSpinBox, QStackedWidget, QVBoxLayout, QWidget

from engine.records import LogitLensView

EMPTY = "Select a token in the chat to see what each layer predicted."
COMPUTING = "Computing the logit lens (a replay of the conversation)…"
BANNER_STYLE = "background: #f39c12; color: black; padding: 3px; border-radius: 3px; font-weight: bold;"
TARGET_PEN = "#e74c3c"  # the selected token's column and its strip
CELL_PAD_PX = 3  # room left on each side of a cell's text
TOP_N_SHOWN = 5  # lines in a cell's hover readout


def display_text(text: str) -> str:
    """Make whitespace visible (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def settles_at(view: LogitLensView) -> int | None:
    """The first block from which the selected token stays the top-1 prediction up to the output."""
    top1 = view.top_ids[:, -1, 0]
    if top1[-1] != view.target_id:
        return None
    layer = len(top1) - 1
    while layer > 0 and top1[layer - 1] == view.target_id:
        layer -= 1
    return layer


class LogitLensPanel(QWidget):
    wanted = Signal(int)  # how many positions (columns) to compute: sent when shown or when the count changes

    def __init__(self, parent=None):
        super().__init__(parent)
        self._view: LogitLensView | None = None
        self._cells: list[list[pg.TextItem]] = []  # [row][column]
        self._bold = np.zeros((0, 0), bool)  # [row, column]: the top-1 is the token that really came next
        self._setup_ui()
        self._layout()
        self.clear()

    def _setup_ui(self) -> None:
        self.positions = QSpinBox(prefix="last ", suffix=" positions", minimum=1, maximum=32, value=8,
                                  toolTip="How many positions (columns) up to the selected token to read",
                                  keyboardTracking=False)  # typing "16" asks once, not for 1 then 16
        self.positions.valueChanged.connect(self.wanted.emit)
        self.title = QLabel("", wordWrap=True)
        self.banner = QLabel("", wordWrap=True, styleSheet=BANNER_STYLE)
        self.message = QLabel(EMPTY, wordWrap=True, alignment=Qt.AlignCenter)
        self.canvas = pg.GraphicsLayoutWidget()
        self.grid = self.canvas.addPlot(row=0, col=0)
        self.grid.setLabel("left", "after block")
        self.grid.setLabel("bottom", "reading token (selected: last column)")
        self.grid.setMouseEnabled(False, False)
        self.grid.hideButtons()
        self.image = pg.ImageItem()
        self.grid.addItem(self.image)
        self.target_box = QGraphicsRectItem()
        self.target_box.setPen(pg.mkPen(TARGET_PEN, width=2))
        self.target_box.setZValue(20)
        self.grid.addItem(self.target_box)
        self.strip = self.canvas.addPlot(row=0, col=1)
        self.strip.setMaximumWidth(70)
        self.strip.setYLink(self.grid)
        self.strip.setXRange(-0.15, 1.15, padding=0)  # room for the end ticks' text
        self.strip.setMouseEnabled(False, False)
        self.strip.hideButtons()
        self.strip.getAxis("left").setStyle(showValues=False)
        self.strip.getAxis("bottom").setTicks([[(0, "0"), (0.5, ".5"), (1, "1")]])
        self.strip.showGrid(x=True, alpha=0.3)
        self.strip_curve = self.strip.plot([], [], pen=pg.mkPen(TARGET_PEN, width=2), symbol="o", symbolSize=4,
                                           symbolBrush=TARGET_PEN, symbolPen=None)
        self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"), interactive=False,
                                          orientation="horizontal", width=12, label="probability of the top-1 token",
                                          colorMapMenu=False)
        self.colour_bar.setImageItem(self.image)
        self.canvas.addItem(self.colour_bar, row=1, col=0)
        self.grid.getViewBox().sigResized.connect(lambda *_: self._fit_texts())
        self.canvas.scene().sigMouseMoved.connect(self._hover)

    def _layout(self) -> None:
        controls = QHBoxLayout()
        controls.addWidget(self.title, 1)
        controls.addWidget(self.positions)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.message)
        self.stack.addWidget(self.canvas)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.banner)
        layout.addWidget(self.stack, 1)

    # -- API ----------------------------------------------------------------------------------
    def columns(self) -> int:
        return self.positions.value()

    def clear(self) -> None:
        self._view = None
        self._remove_cells()
        self.title.setText("Logit lens: each block's guess at the next token")
        self.banner.hide()
        self.message.setText(EMPTY)
        self.stack.setCurrentWidget(self.message)

    def show_computing(self) -> None:
        if self._view is None:
            self.message.setText(COMPUTING)
            self.stack.setCurrentWidget(self.message)
        else:  # keep the last lens on screen while the next one is computed
            self.title.setText("Recomputing the logit lens…")

    def show_problem(self, text: str) -> None:
        """The lens could not be computed (e.g. the context is gone): say why instead of a stale lens."""
        self._view = None
        self._remove_cells()
        self.banner.hide()
        self.message.setText(text)
        self.stack.setCurrentWidget(self.message)

    @property
    def view(self) -> LogitLensView | None:
        """The lens on screen (None while there is none)."""
        return self._view

    def show_view(self, view: LogitLensView) -> None:
        self._view = view
        n_layers, n_columns = view.top_ids.shape[:2]
        self._draw_title(view)
        self.banner.setVisible(bool(view.interventions))
        self.banner.setText("Under intervention: " + " · ".join(i.label for i in view.interventions))
        top1 = view.top_probs[:, :, 0].astype(np.float64)  # [L, P]
        self.image.setImage(top1.T, levels=(0, 1))  # ImageItem's first axis is x: columns
        self.image.setRect(QRectF(-0.5, -0.5, n_columns, n_layers))  # cell (column c, row l) centred on (c, l)
        self.target_box.setRect(QRectF(n_columns - 1.5, -0.5, 1, n_layers))
        self.grid.setRange(xRange=(-0.5, n_columns - 0.5), yRange=(-0.5, n_layers - 0.5), padding=0)
        rows = [(l, str(l)) for l in range(0, n_layers - 1, 5)] + [(n_layers - 1, "out")]
        self.grid.getAxis("left").setTicks([rows])
        self.strip_curve.setData(view.next_probs[:, -1].astype(np.float64), np.arange(n_layers))
        self.strip.setTitle(f"p(“{display_text(self._text(view.target_id))}”)", size="8pt")
        self._make_cells(view, top1)
        self.stack.setCurrentWidget(self.canvas)
        self._fit_texts()

    # What is drawn, for tests (they assert on data, not pixels).
    def cell_texts(self) -> list[list[str]]:
        """Per row (block) and column the top-1 token's whole text (the cells show it elided)."""
        view = self._view
        return [] if view is None else [[self._text(int(i)) for i in row] for row in view.top_ids[:, :, 0]]

    def cell_colours(self) -> np.ndarray:
        """The values the heatmap's cells are coloured by: [row, column]."""
        image = self.image.image
        return np.zeros((0, 0)) if self._view is None or image is None else np.asarray(image).T.copy()

    def target_strip(self) -> np.ndarray:
        x, _ = self.strip_curve.getData()
        return np.zeros(0) if x is None else np.asarray(x).copy()

    def banner_text(self) -> str:
        return self.banner.text() if self.banner.isVisibleTo(self) else ""

    def cell_readout(self, row: int, column: int) -> str:
        """The hover readout of one cell: its top-N with probabilities and the probability of the token
        that actually came next there."""
        view = self._view
        block = "the output" if row == view.num_layers - 1 else f"block {row}"
        lines = [f"after {block}, reading “{display_text(view.input_texts[column])}” "
                 f"(position {view.positions[column]}):"]
        for rank, (token, p) in enumerate(zip(view.top_ids[row, column][:TOP_N_SHOWN],
                                              view.top_probs[row, column][:TOP_N_SHOWN]), 1):
            lines.append(f"{rank}. “{display_text(self._text(int(token)))}” {float(p):.3f}")
        nxt = view.next_ids[column]
        came = "selected token" if column == len(view.positions) - 1 else "came next"
        lines.append(f"{came} “{display_text(self._text(nxt))}”: {float(view.next_probs[row, column]):.3f}")
        return "\n".join(lines)

    # -- Qt -----------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self.wanted.emit(self.columns())  # on screen now: the lens is wanted (a repeat costs nothing)

    # -- drawing ------------------------------------------------------------------------------
    def _text(self, token_id: int) -> str:
        return self._view.texts.get(int(token_id), f"id {token_id}")

    def _draw_title(self, view: LogitLensView) -> None:
        target = display_text(self._text(view.target_id))
        final = float(view.next_probs[-1, -1])
        settled = settles_at(view)
        when = f"the top guess from block {settled} on" if settled is not None else "not the top guess"
        self.title.setText(f"Selected “{target}” is {when}; p = {final:.2f} at the output")

    def _remove_cells(self) -> None:
        for row in self._cells:
            for item in row:
                self.grid.removeItem(item)
        self._cells = []

    def _make_cells(self, view: LogitLensView, top1: np.ndarray) -> None:
        """One text item per cell, kept from one lens to the next of the same shape: making 240 of them anew
        (30 blocks × 8 positions) stalled the window for 0.1–0.3 s at each selected token."""
        self._bold = view.top_ids[:, :, 0] == np.asarray(view.next_ids)[None, :]  # such a cell reads bold
        n_rows, n_columns = top1.shape
        if [len(items) for items in self._cells] != [n_columns] * n_rows:
            self._remove_cells()
            for row in range(n_rows):
                self._cells.append([self._new_cell(column, row) for column in range(n_columns)])
        colours = pg.colormap.get("viridis")
        for row, items in enumerate(self._cells):
            for column, item in enumerate(items):
                # dark text on viridis' light (yellow-green) end, light text on its dark end
                light = colours.map(float(top1[row, column]), mode="qcolor").lightness() > 140
                item.setColor("k" if light else "w")

    def _new_cell(self, column: int, row: int) -> pg.TextItem:
        item = pg.TextItem("", anchor=(0.5, 0.5))
        item.setPos(column, row)
        self.grid.addItem(item)
        return item

    def _fit_texts(self) -> None:
        """Each cell's text in a font sized to its row, elided to its column; no text when a row is too
        short to read (the hover readout still names every cell)."""
        view = self._view
        if view is None or not self._cells:
            return
        box = self.grid.getViewBox()
        n_layers, n_columns = view.top_ids.shape[:2]
        row_px, column_px = box.height() / n_layers, box.width() / n_columns
        font = QFont()
        font.setPixelSize(int(max(7, min(10, row_px - 3))))
        visible = row_px >= 8
        texts = self.cell_texts()
        for row, items in enumerate(self._cells):
            for column, item in enumerate(items):
                item.setVisible(visible)
                if visible:
                    font.setBold(bool(self._bold[row, column]))
                    item.setFont(font)
                    room = int(column_px) - 2 * CELL_PAD_PX
                    item.setText(QFontMetrics(font).elidedText(display_text(texts[row][column]), Qt.ElideRight, room))
        self._label_columns(view, column_px)

    def _label_columns(self, view: LogitLensView, column_px: float) -> None:
        """The column axis on two staggered lines, so each token has two columns' width; elided to that
        (the whole token is the tooltip under the axis)."""
        axis = self.grid.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
        n_columns = len(view.input_texts)
        ticks = []
        for c, text in enumerate(view.input_texts):
            # a label is centred on its column and the axis drops one that overruns its ends
            edge = 2 * min(c + 0.5, n_columns - c - 0.5) * column_px
            room = int(min(2 * column_px, edge)) - 2 * CELL_PAD_PX
            ticks.append((c, ("\n" if c % 2 else "") + metrics.elidedText(display_text(text), Qt.ElideRight, room)))
        axis.setTicks([ticks])
        axis.setHeight(2 * metrics.height() + 22)  # two lines of ticks and the axis title

    def _hover(self, position) -> None:
        """The cell under the mouse as the plot's tooltip; under the column axis, that column's whole token."""
        view = self._view
        if view is None:
            self.canvas.setToolTip("")
            return
        point = self.grid.getViewBox().mapSceneToView(position)
        column, row = round(point.x()), round(point.y())
        if not 0 <= column < len(view.positions):
            self.canvas.setToolTip("")
        elif 0 <= row < view.num_layers and self.grid.getViewBox().sceneBoundingRect().contains(position):
            self.canvas.setToolTip(self.cell_readout(row, column))
        elif self.grid.getAxis("bottom").sceneBoundingRect().contains(position):
            self.canvas.setToolTip(f"“{display_text(view.input_texts[column])}” (position {view.positions[column]})")
        else:
            self.canvas.setToolTip("")
