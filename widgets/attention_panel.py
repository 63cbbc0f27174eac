"""Attention maps, computed on demand: for a chosen layer and head (or the mean of a KV group's heads,
or of all), each reply token's query over the whole context, token text on both axes, a colour bar and
a hover readout. Nothing is recorded while generating: the panel draws an AttentionView (one layer,
recomputed by replay when someone looks) and asks for its layer with `wanted` when it comes on screen,
when the layer changes, or when the query selected in the chat lies outside the view it has (then
`wanted_query()` says which position). It does not compute or schedule anything itself."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QImage, QPainter, QPen
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QToolButton, QVBoxLayout, QWidget

from engine.records import AttentionView

IDLE = ("Attention is computed by replay while this panel is on screen: at the end of a reply, "
        "or for the layer you pick.")
KEY_WINDOW = 32  # keys shown around the selected query before zooming out: each gets a readable label
ROW_WINDOW = 24  # query rows shown at once (the rest scroll with the mouse wheel or a drag)
SINK_COLUMN_PX = 58  # the sink column's plot, its 'sink' label included
COLOUR_BAR_PX = 76  # the colour bar with its scale and title, when it moves beside the sink column
LABEL_CHARS = 7  # an axis label's length before it is elided (the whole text is in the hover readout)


def display_text(text: str) -> str:
    """Make whitespace visible on an axis (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def elided(text: str) -> str:
    shown = display_text(text)
    return shown if len(shown) <= LABEL_CHARS else shown[:LABEL_CHARS - 1] + "…"


def sqrt_colormap() -> pg.ColorMap:
    """magma at √weight, drawn against the weight itself: most heads park their mass on a few tokens
    (often the first, the "attention sink"), and a square root keeps the rest of a row visible, while
    the colour bar still reads in real weights."""
    magma = pg.colormap.get("magma")
    stops = np.linspace(0, 1, 33)
    return pg.ColorMap(stops, magma.map(np.sqrt(stops), mode="qcolor"))


def sharpness(weights: np.ndarray) -> np.ndarray:
    """Per head, the mean over queries of the largest weight on one token other than the first: how
    pointedly a head looks at something (the first token is where heads park attention they don't use)."""
    return weights[:, :, 1:].max(axis=2).mean(axis=1) if weights.shape[2] > 1 else np.zeros(len(weights))


class TokenAxis(pg.AxisItem):
    """An axis labelled with token texts at integer positions, as many as fit without overlapping; the
    bottom one writes them vertically so a window of 32 keys is labelled key by key."""

    def __init__(self, orientation: str):
        super().__init__(orientation)
        self.labels: list[str] = []
        self.offset = 0  # coordinate i names token offset + i
        self.marked: int | None = None  # a coordinate always labelled (the selected query)
        self._drawn: list[int] = []
        if orientation == "bottom":
            self.setHeight(74)
        else:
            self.setWidth(70)

    def tickValues(self, minVal, maxVal, size):  # noqa: N802 (pyqtgraph's name)
        minVal, maxVal = sorted((minVal, maxVal))  # an inverted axis hands them over reversed
        first, last = max(0, math.ceil(minVal)), min(len(self.labels) - self.offset - 1, math.floor(maxVal))
        if last < first or size <= 0:
            self._drawn = []
            return []
        stride = max(1, math.ceil(12 / (size / max(maxVal - minVal, 1e-9))))  # 12 px: one line of text
        values = [v for v in range(first - first % stride, last + 1, stride) if v >= first]
        if self.marked is not None and first <= self.marked <= last and self.marked not in values:
            values = [v for v in values if abs(v - self.marked) >= stride] + [self.marked]
        self._drawn = sorted(values)
        return [(stride, self._drawn)]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph's name)
        return [elided(self.labels[int(v) + self.offset]) for v in values]

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs):  # noqa: N802 (pyqtgraph's name)
        if self.orientation != "bottom":
            return super().drawPicture(p, axisSpec, tickSpecs, textSpecs)
        super().drawPicture(p, axisSpec, tickSpecs, [])
        view = self.linkedView()
        if view is None:
            return
        p.setPen(self.textPen())
        for value, text in zip(self._drawn, self.tickStrings(self._drawn, 1, 1)):
            x = self.mapFromScene(view.mapViewToScene(QPointF(value, 0))).x()
            p.save()
            p.translate(x, 7)
            p.rotate(-90)  # reads upwards, ending at the axis
            p.drawText(QRectF(-54, -7, 54, 14), int(Qt.AlignRight | Qt.AlignVCenter), text)
            p.restore()


class HeadStrip(QWidget):
    """Small multiples: one thumbnail per head (the selected query's recent rows and keys), laid out by
    KV group (heads that share keys and values sit together). Click a head to show it, a group's name for its mean."""

    picked = Signal(object)  # ("head", h) or ("group", g)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.groups: list[tuple[int, list[int]]] = []
        self._images: dict[int, QImage] = {}
        self._selected: set[int] = set()
        self._tips: dict[int, str] = {}
        self._areas: list[tuple[QRectF, tuple, str]] = []  # hit boxes: rect, choice, tooltip
        self.setFixedHeight(52)

    def set_heads(self, groups, images: dict[int, QImage], selected: set[int], tips: dict[int, str]) -> None:
        self.groups, self._images, self._selected, self._tips = groups, images, selected, tips
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        n_heads = sum(len(heads) for _, heads in self.groups)
        if not n_heads:
            return
        gap, label = 8, 14
        tile = max(8, min(36, (self.width() - gap * len(self.groups)) // n_heads))
        x, self._areas = 2.0, []
        text = self.palette().windowText().color()
        for group, heads in self.groups:
            width = tile * len(heads)
            box = QRectF(x, 0, width, label)
            painter.setPen(text)
            painter.drawText(box, int(Qt.AlignCenter), QFontMetrics(painter.font()).elidedText(
                f"KV {group}", Qt.ElideRight, int(width)))
            self._areas.append((box, ("group", group), f"KV group {group}: the mean of heads "
                                f"{', '.join(map(str, heads))} (they read the same keys and values)"))
            for i, head in enumerate(heads):
                cell = QRectF(x + i * tile + 1, label + 1, tile - 2, tile - 2)
                if head in self._images:
                    painter.drawImage(cell, self._images[head])
                painter.setPen(QPen(QColor("#4fc3f7") if head in self._selected else text.darker(150),
                                    2 if head in self._selected else 1))
                painter.drawRect(cell)
                self._areas.append((cell, ("head", head), self._tips.get(head, f"head {head}")))
            x += width + gap
        self.setFixedHeight(label + tile + 2)

    def _hit(self, position):
        return next((area for area in self._areas if area[0].contains(position)), None)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        hit = self._hit(event.position())
        self.setToolTip(hit[2] if hit else "")

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        hit = self._hit(event.position())
        if hit:
            self.picked.emit(hit[1])


class AttentionPanel(QWidget):
    # A layer whose view is wanted: sent when the panel is shown, when the layer changes, and when the
    # query selected in the chat (`wanted_query()`) is not in the view on screen.
    wanted = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.n_layers = self.n_heads = self.n_kv_heads = 0
        self._view: AttentionView | None = None
        self._labels: list[str] = []
        self._matrix = np.zeros((0, 0))
        self._choice: tuple = ("auto",)  # ("auto",) the sharpest head, ("all",), ("group", g), ("head", h)
        self._query: int | None = None  # the selected query's absolute position (None: the newest)
        self._wanted_query: int | None = None
        self._row = -1  # the highlighted row of the drawn matrix
        self._groups_key: tuple[int, ...] = ()  # per head its KV group, as the picker lays them out
        self._windows: tuple[int | None, ...] = ()  # per layer its sliding window (None: global); () unknown
        self.head_choices: list[tuple] = []
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.layer = QSpinBox(prefix="layer ")
        self.head = QComboBox()
        self.head.setMinimumContentsLength(12)
        self.whole = QToolButton(text="whole context", checkable=True)
        self.whole.setToolTip(f"Show every key, not the {KEY_WINDOW} up to the selected query "
                              "(the mouse wheel zooms, a drag scrolls)")
        self.strip = HeadStrip()
        self.note = QLabel(IDLE)
        self.note.setWordWrap(True)
        self.readout = QLabel("Hover a cell: its query, key and weight.")
        self.readout.setWordWrap(True)
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.layer.valueChanged.connect(self._layer_changed)
        self.head.activated.connect(lambda index: self.choose(self.head_choices[index]))
        self.strip.picked.connect(self.choose)
        self.whole.toggled.connect(lambda _: self._scroll())
        self.keys_axis, self.rows_axis = TokenAxis("bottom"), TokenAxis("left")
        self.plot = pg.PlotWidget(axisItems={"bottom": self.keys_axis, "left": self.rows_axis})
        self.plot.setLabel("bottom", "key: the context, up to the query")
        self.plot.setLabel("left", "query: the reply's tokens")
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap=sqrt_colormap(), interactive=False, width=12,
                                          label="attention weight (colour ∝ √weight)")
        self.colour_bar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.marker = pg.PlotCurveItem(pen=pg.mkPen("#4fc3f7", width=2))  # the selected query's row
        self.plot.addItem(self.marker)
        # a sliding-window layer's edge: left of it, keys the query cannot see (they fell out of its window)
        self.window_edge = pg.PlotCurveItem(pen=pg.mkPen("#ffb74d", width=2, style=Qt.DashLine), connect="pairs")
        self.plot.addItem(self.window_edge)
        self.plot.scene().sigMouseMoved.connect(self._hover)
        self._setup_sink_column()

    def _setup_sink_column(self) -> None:
        """Attention sinks (gpt-oss): the share of each query row that went to the head's learned sink logit
        and to no position, drawn as its own column beside the map, row for row (the y axes are linked);
        hidden for models without sinks."""
        self._sinks: np.ndarray | None = None  # [Q] as drawn
        self.sink_plot = pg.PlotWidget()
        self.sink_plot.setFixedWidth(SINK_COLUMN_PX + COLOUR_BAR_PX)
        self.sink_plot.setMenuEnabled(False)
        self.sink_plot.setMouseEnabled(x=False, y=True)
        self.sink_plot.hideAxis("left")
        bottom = self.sink_plot.getAxis("bottom")
        bottom.setHeight(self.keys_axis.height())  # the same plot height as the map, so rows line up
        bottom.setTicks([[(0, "sink")]])
        self.sink_plot.setYLink(self.plot)
        self.sink_plot.invertY(True)  # as the map: query rows top down (a linked range does not carry the inversion)
        self.sink_plot.setXRange(-0.5, 0.5, padding=0)
        self.sink_image = pg.ImageItem()
        self.sink_image.setColorMap(sqrt_colormap())
        self.sink_plot.addItem(self.sink_image)
        self.sink_colour_bar = pg.ColorBarItem(values=(0, 1), colorMap=sqrt_colormap(), interactive=False, width=12,
                                               label="attention weight (colour ∝ √weight)")
        self.sink_colour_bar.setImageItem(self.sink_image, insert_in=self.sink_plot.getPlotItem())
        self._bar_beside_sinks = False  # the map's own bar shows until a view has sinks
        self.sink_marker = pg.PlotCurveItem(pen=pg.mkPen("#4fc3f7", width=2))  # the outlined row, as on the map
        self.sink_plot.addItem(self.sink_marker)
        self.sink_plot.setToolTip("The attention sink: a learned logit per head that joins each row's softmax "
                                  "and takes a share without pointing at any position")
        self.sink_plot.scene().sigMouseMoved.connect(self._hover_sink)
        self.sink_plot.hide()

    def _layout(self) -> None:
        controls = QHBoxLayout()
        controls.addWidget(self.layer)
        controls.addWidget(self.head, 1)
        controls.addWidget(self.whole)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.strip)
        layout.addWidget(self.note)
        maps = QHBoxLayout()
        maps.setSpacing(0)
        maps.addWidget(self.plot, 1)
        maps.addWidget(self.sink_plot)  # shown only for models with attention sinks
        layout.addLayout(maps, 1)
        layout.addWidget(self.readout)

    # -- API ----------------------------------------------------------------------------------
    def set_model_info(self, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        """A new model. It opens a third of the way in: layer 0's heads look at everything about evenly
        (its mean is one flat colour), while middle layers have heads that point at particular tokens."""
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self._windows = ()
        self.layer.setSuffix("")
        self.layer.blockSignals(True)
        self.layer.setRange(0, max(n_layers - 1, 0))
        self.layer.setValue(n_layers // 3)
        self.layer.blockSignals(False)
        per_group = n_heads // n_kv_heads if n_kv_heads else 1
        self._choice, self._query = ("auto",), None
        self._fill_head_choices(tuple(h // per_group for h in range(n_heads)))
        self.clear()

    def set_layer_windows(self, windows) -> None:
        """Per layer its sliding window (None: a global layer), for models that mix them (Gemma 2/3, gpt-oss):
        the layer picker says which kind each layer is, and the map draws the window's edge."""
        self._windows = tuple(windows) if any(w is not None for w in windows) else ()
        self._label_layer(self.layer.value())
        self._redraw()

    def layer_kind(self, layer: int) -> str:
        """'sliding window of W', 'global' or '' (a model without sliding windows), as the picker says it."""
        if not 0 <= layer < len(self._windows):
            return ""
        window = self._windows[layer]
        return "global" if window is None else f"sliding window of {window}"

    def set_token_labels(self, labels: list[str]) -> None:
        """Every position's token text: the request's prompt, then each generated token."""
        self._labels = list(labels)
        self._set_axes()

    def clear(self) -> None:
        self._view, self._wanted_query = None, None
        self.note.setText(IDLE)
        self._redraw()

    def current_layer(self) -> int:
        return self.layer.value()

    def show_computing(self) -> None:
        self.note.setText(f"Computing layer {self.layer.value()}'s attention…")

    def show_view(self, view: AttentionView) -> None:
        self._view = view
        if self._wanted_query is not None and self._covers(self._wanted_query):
            self._wanted_query = None
        if view.kv_group != self._groups_key:
            self._fill_head_choices(view.kv_group)
        self._redraw()

    def select_query(self, position: int | None) -> None:
        """Follow the token selected in the chat: `position` is the query that produced it (an absolute
        position in the context), None the newest row (a streaming reply). Its row is highlighted and
        scrolled to when the view has it; otherwise the panel keeps it as `wanted_query()` and emits
        `wanted`, so that the app asks for a view that covers it."""
        self._query = position
        if position is not None and self._view is not None and not self._covers(position):
            self._wanted_query = position
            self.wanted.emit(self.layer.value())
        self._redraw()

    def wanted_query(self) -> int | None:
        """The selected query's position when the view on screen does not hold it (None otherwise)."""
        return self._wanted_query

    # Data as drawn, for tests.
    def matrix(self) -> np.ndarray:
        """What is drawn: [query row, key position], NaN where a position is later than the query (or, on a
        sliding-window layer, earlier than its window)."""
        return self._matrix.copy()

    def sink_column(self) -> np.ndarray | None:
        """What the sink column draws: per query row the shown heads' mean sink share (None: no sinks)."""
        return None if self._sinks is None else self._sinks.copy()

    def shown_heads(self) -> tuple[int, ...]:
        """The heads whose mean is drawn."""
        kind = self._choice[0]
        if kind == "head":
            return (self._choice[1],)
        if kind == "group":
            return tuple(h for h, g in enumerate(self._groups_key) if g == self._choice[1])
        if kind == "auto" and self._view is not None:
            return (int(np.argmax(sharpness(self._view.weights))),)
        return tuple(range(len(self._groups_key)))

    def selected_row(self) -> int:
        """The highlighted row of matrix() (-1: none)."""
        return self._row

    def axis_labels(self) -> tuple[list[str], list[str]]:
        """The texts the (query, key) axes name coordinates with, in coordinate order (before eliding)."""
        start = self._view.query_start if self._view is not None else 0
        rows, keys = self._matrix.shape
        return self._labels[start:start + rows], self._labels[:keys]

    def readout_at(self, row: int, key: int) -> str:
        """The hover readout of matrix()[row, key]."""
        position = self._view.query_start + row
        return (f"query «{self._full(position)}» (pos {position}) → key «{self._full(key)}» (pos {key}): "
                f"{self._matrix[row, key]:.3f}")

    # -- Qt -----------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self.wanted.emit(self.layer.value())  # on screen now: the view is wanted (a repeat costs nothing)

    # -- choosing -----------------------------------------------------------------------------
    def _fill_head_choices(self, kv_group: tuple[int, ...]) -> None:
        """The head picker, laid out by KV group: each group's mean, then its heads."""
        self._groups_key = tuple(kv_group)
        items = [("sharpest head (auto)", ("auto",)), ("mean of all heads", ("all",))]
        for group in sorted(set(kv_group)):
            heads = [h for h, g in enumerate(kv_group) if g == group]
            items.append((f"KV group {group}: mean of heads {', '.join(map(str, heads))}", ("group", group)))
            items += [(f"    head {h} (KV group {group})", ("head", h)) for h in heads]
        self.head_choices = [choice for _, choice in items]  # the picker's entries, in its order
        self.head.clear()
        self.head.addItems([text for text, _ in items])
        if self._choice not in self.head_choices:
            self._choice = ("auto",)
        self.head.setCurrentIndex(self.head_choices.index(self._choice))

    def choose(self, choice: tuple) -> None:
        """Show ('auto',) the sharpest head, ('all',) the mean of all heads, ('group', g) a KV group's mean
        or ('head', h) one head (the picker and the thumbnails call this)."""
        self._choice = tuple(choice)
        self.head.setCurrentIndex(self.head_choices.index(self._choice))
        self._redraw()

    def _layer_changed(self, layer: int) -> None:
        self._label_layer(layer)
        self._redraw()
        self.wanted.emit(layer)

    def _label_layer(self, layer: int) -> None:
        kind = self.layer_kind(layer)
        self.layer.setSuffix(f" · {kind.replace('sliding window of ', 'sliding ')}" if kind else "")
        self.layer.setToolTip(f"Layer {layer}: {kind}" if kind else "")

    def _covers(self, position: int) -> bool:
        return self._view.query_start <= position < self._view.query_start + self._view.num_queries

    # -- drawing ------------------------------------------------------------------------------
    def _redraw(self) -> None:
        view = self._view if self._view is not None and self._view.layer == self.layer.value() else None
        if view is None:
            matrix, self._row = np.zeros((0, 0)), -1
        else:
            matrix = view.weights[list(self.shown_heads())].mean(axis=0).astype(np.float64)  # [Q, S]
            rows, cols = np.indices(matrix.shape)
            matrix[cols > rows + view.query_start] = np.nan  # later positions do not exist for that query
            if view.window is not None:  # nor, for a sliding-window layer, the positions before its window
                matrix[cols <= rows + view.query_start - view.window] = np.nan
            in_view = self._query is not None and self._covers(self._query)
            self._row = self._query - view.query_start if in_view else view.num_queries - 1
        self._matrix = matrix
        self._draw_sinks(view)
        # NaN cells (keys after their query) are left transparent: "does not exist", not "weight 0"
        self.image.setImage(matrix.T if matrix.size else np.full((1, 1), np.nan), levels=(0, 1))
        self.image.setRect(QRectF(-0.5, -0.5, max(matrix.shape[1], 1), max(matrix.shape[0], 1)))  # cell i on i
        self._describe(view)
        self._draw_window_edge(view)
        self._set_axes()
        self._scroll()
        self._draw_strip(view)

    def _describe(self, view: AttentionView | None) -> None:
        if view is None:
            return
        heads, first = self.shown_heads(), view.query_start
        groups = sorted({self._groups_key[h] for h in heads})
        if len(heads) == 1:
            what = f"head {heads[0]} (KV group {groups[0]})"
            if self._choice[0] == "auto":
                what += (f", the sharpest here: its queries put {sharpness(view.weights)[heads[0]]:.0%} on one "
                         "token besides the first, on average")
        else:
            what = f"mean of heads {', '.join(map(str, heads))}" + (f" (KV group {groups[0]})" if len(groups) == 1 else "")
        row = first + self._row
        produced = f"; the outlined row (pos {row}) produced «{self._full(row + 1)}»" if row + 1 < len(self._labels) else ""
        kind = (f" — sliding window: each query sees its last {view.window} positions (dashed edge)"
                if view.window is not None else " — global: each query sees every earlier position"
                if self.layer_kind(view.layer) == "global" else "")
        sink = (f" The sink took {self._sinks[self._row]:.0%} of the outlined row (the 'sink' column): "
                "weight no position received." if self._sinks is not None else "")
        self.note.setText(f"Layer {view.layer}{kind}, {what}. Queries at positions {first}–"
                          f"{first + view.num_queries - 1}{produced}.{sink}")

    def _set_axes(self) -> None:
        start = self._view.query_start if self._view is not None and self._matrix.size else 0
        self.keys_axis.labels, self.rows_axis.labels, self.rows_axis.offset = self._labels, self._labels, start
        self.rows_axis.marked = self._row if self._row >= 0 else None
        for axis in (self.keys_axis, self.rows_axis):
            axis.picture = None  # labels changed, ranges maybe not: draw again
            axis.update()

    def _scroll(self) -> None:
        """Show the selected row among the rows above it, and its last KEY_WINDOW keys (or every key)."""
        rows, keys = self._matrix.shape
        box = self.plot.getPlotItem().getViewBox()
        if not self._matrix.size:
            self.marker.setData([], [])
            return
        box.setLimits(xMin=-0.5, xMax=keys - 0.5, yMin=-0.5, yMax=rows - 0.5)
        position = self._view.query_start + self._row
        last_key = position if not self.whole.isChecked() else keys - 1
        first_key = 0 if self.whole.isChecked() else max(0, position - KEY_WINDOW + 1)
        first_row = max(0, self._row - ROW_WINDOW + 1)
        box.setRange(xRange=(first_key - 0.5, last_key + 0.5), yRange=(first_row - 0.5, min(rows, first_row + ROW_WINDOW) - 0.5),
                     padding=0)
        top, bottom = self._row - 0.5, self._row + 0.5
        self.marker.setData([-0.5, keys - 0.5, keys - 0.5, -0.5, -0.5], [top, top, bottom, bottom, top])

    def _draw_window_edge(self, view: AttentionView | None) -> None:
        """A stepped line left of each row's oldest visible key, where the window has moved past the start."""
        xs, ys = [], []
        if view is not None and view.window is not None:
            for row in range(view.num_queries):
                edge = view.query_start + row - view.window + 0.5  # between the last unseen key and the first seen
                if edge > -0.5:
                    xs += [edge, edge]
                    ys += [row - 0.5, row + 0.5]
                    if row + 1 < view.num_queries:  # the step down to the next row's edge, one key to the right
                        xs += [edge, edge + 1]
                        ys += [row + 0.5, row + 0.5]
        self.window_edge.setData(xs, ys)

    def _draw_sinks(self, view: AttentionView | None) -> None:
        self._sinks = None
        if view is not None and view.sinks is not None:
            self._sinks = view.sinks[list(self.shown_heads())].mean(axis=0).astype(np.float64)  # [Q]
        self.sink_plot.setVisible(self._sinks is not None)
        self._place_colour_bar(beside_sinks=self._sinks is not None)
        if self._sinks is not None:
            self.sink_image.setImage(self._sinks[None, :], levels=(0, 1))  # [x = 1 column, y = Q rows]
            self.sink_image.setRect(QRectF(-0.5, -0.5, 1, len(self._sinks)))
            top, bottom = self._row - 0.5, self._row + 0.5
            self.sink_marker.setData([-0.5, 0.5, 0.5, -0.5, -0.5], [top, top, bottom, bottom, top])

    def _place_colour_bar(self, beside_sinks: bool) -> None:
        """The colour bar sits right of the sink column when there is one: between the map and the column it
        cut the sinks off from the map they complete (each row's weights plus its sink sum to 1). Two bars, one
        per plot, the map's taken out of its layout while the other shows (an item moved between two plots'
        scenes crashes Qt)."""
        if beside_sinks == self._bar_beside_sinks:
            return
        self._bar_beside_sinks = beside_sinks
        map_layout = self.plot.getPlotItem().layout
        if beside_sinks:
            map_layout.removeItem(self.colour_bar)
        else:
            map_layout.addItem(self.colour_bar, 2, 5)  # where ColorBarItem.setImageItem(insert_in=...) put it
        self.colour_bar.setVisible(not beside_sinks)
        self.sink_colour_bar.setVisible(beside_sinks)

    def _hover_sink(self, scene_position) -> None:
        if self._sinks is None:
            return
        row = round(self.sink_plot.getPlotItem().getViewBox().mapSceneToView(scene_position).y())
        if 0 <= row < len(self._sinks):
            text = self.sink_readout(row)
            self.readout.setText(text)
            self.sink_plot.setToolTip(text)

    def sink_readout(self, row: int) -> str:
        """The hover readout of the sink column at query row `row`."""
        position = self._view.query_start + row
        return (f"query «{self._full(position)}» (pos {position}) → the sink: {self._sinks[row]:.3f} "
                "(a learned per-head logit: this share went to no position)")

    def _draw_strip(self, view: AttentionView | None) -> None:
        groups = [(g, [h for h, k in enumerate(self._groups_key) if k == g]) for g in sorted(set(self._groups_key))]
        images, tips = {}, {}
        if view is not None:
            lut = self.colour_bar.colorMap().getLookupTable(0, 1, 256, alpha=False)
            rows = slice(max(0, self._row - ROW_WINDOW + 1), self._row + 1)
            position = view.query_start + self._row
            keys = slice(max(0, position - KEY_WINDOW + 1), position + 1)
            score = sharpness(view.weights)
            for h in range(len(view.kv_group)):
                pixels = np.ascontiguousarray(lut[(np.clip(view.weights[h, rows, keys], 0, 1) * 255).astype(np.uint8)])
                images[h] = QImage(pixels.data, pixels.shape[1], pixels.shape[0], pixels.strides[0],
                                   QImage.Format_RGB888).copy()
                tips[h] = f"head {h} · KV group {view.kv_group[h]} · sharpness {score[h]:.2f} (click to show)"
        self.strip.set_heads(groups, images, set(self.shown_heads()) if view is not None else set(), tips)

    def _hover(self, scene_position) -> None:
        if not self._matrix.size:
            return
        box = self.plot.getPlotItem().getViewBox()
        point = box.mapSceneToView(scene_position)
        row, key = round(point.y()), round(point.x())
        rows, keys = self._matrix.shape
        over_keys = self.keys_axis.sceneBoundingRect().contains(scene_position)
        over_rows = self.rows_axis.sceneBoundingRect().contains(scene_position)
        if box.sceneBoundingRect().contains(scene_position) and 0 <= row < rows and 0 <= key < keys:
            text = self.readout_at(row, key) if not np.isnan(self._matrix[row, key]) else self._unseen(row, key)
        elif over_keys and 0 <= key < keys:
            text = f"key «{self._full(key)}» (pos {key})"
        elif over_rows and 0 <= row < rows:
            text = f"query «{self._full(self._view.query_start + row)}» (pos {self._view.query_start + row})"
        else:
            return
        self.readout.setText(text)
        self.plot.setToolTip(text)

    def _unseen(self, row: int, key: int) -> str:
        query = self._view.query_start + row
        if key > query:
            return f"key pos {key} comes after query pos {query}: it cannot be seen"
        return (f"key pos {key} is outside query pos {query}'s sliding window (its last {self._view.window} "
                "positions): it cannot be seen")

    def _full(self, position: int) -> str:
        return display_text(self._labels[position]) if 0 <= position < len(self._labels) else "?"
