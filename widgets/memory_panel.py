"""Memory: the KV block map (free / cached prefix / per-sequence / shared; a tooltip per block), KV bytes
against what contiguous caches would reserve, weights by dtype as a bar, and RSS / CUDA curves over time.
The map zooms to the blocks in use (a pool has hundreds); the CUDA curves exist only for a model on CUDA;
clear() forgets the previous model entirely (a model switch), so the old one's weights never show."""
from __future__ import annotations

from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPoint, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import QCheckBox, QLabel, QSizePolicy, QToolTip, QVBoxLayout, QWidget

from engine.records import MemorySnapshot

CACHED_COLOUR = "#58b368"
SEQUENCE_COLOURS = ["#2e86de", "#f39c12", "#8e44ad", "#16a085", "#d35400", "#c2185b", "#607d8b"]
DTYPE_COLOURS = {"float32": "#2e86de", "bfloat16": "#16a085", "float16": "#1abc9c", "int8": "#f39c12",
                 "int4": "#8e44ad", "q8_0": "#e67e22", "q4_0": "#9b59b6", "q4_1": "#a569bd",
                 "mxfp4": "#c0392b"}  # gpt-oss experts kept packed
CELL_MIN, CELL_MAX = 4, 22  # pixels: a cell smaller than 4 is a smear, larger than 22 a wall of squares
HISTORY = 300


def mb(n: int) -> str:
    """Decimal megabytes, as the model panel and the status line count them (ModelFacts.weights)."""
    return f"{n / 1e6:.1f} MB"


def latent_line(snap: MemorySnapshot) -> str:
    """An MLA model (DeepSeek-V2) caches one latent and one RoPE key a token and layer, not per-head K and V:
    what that takes a token (every layer) against what per-head K/V of the same attention would ('' otherwise)."""
    if not snap.kv_latent_values or not snap.kv_block_size:
        return ""
    per_token = snap.kv_bytes_per_block / snap.kv_block_size
    as_heads = per_token * snap.kv_per_head_values / snap.kv_latent_values
    return (f"<b>Latent attention (MLA)</b>: latent + RoPE key, {snap.kv_latent_values} values a token and layer "
            f"= {per_token / 1e3:.2f} KB a token; as per-head K/V ({snap.kv_per_head_values} values) it would be "
            f"{as_heads / 1e3:.2f} KB ({as_heads / per_token:.1f}× more)<br>")


def weights_text(weight_bytes: dict) -> str:
    """'int4 56.6 MB + float32 28.3 MB': word for word what ModelFacts.weights says for the same bytes
    (largest first, as Engine.facts orders them)."""
    return " + ".join(f"{kind} {mb(n)}" for kind, n in weight_segments(weight_bytes))


def weight_segments(weight_bytes: dict) -> list[tuple[str, int]]:
    return sorted(((kind, n) for kind, n in weight_bytes.items() if n > 0), key=lambda kv: -kv[1])


def sequence_label(key: str, keys: list[str]) -> str:
    """What a sequence is ("request.sample" in a snapshot): the newest request is the chat's reply being
    written, 'this conversation' (its extra samples 'sample K'); older ones 'request N'; a drafter's 'draft'."""
    request, _, sample = key.partition(".")
    if not request.isdigit():
        return request
    newest = max((int(k.partition(".")[0]) for k in keys if k.partition(".")[0].isdigit()), default=-1)
    if int(request) == newest:
        return "this conversation" if sample in ("", "0") else f"sample {sample}"
    several = sum(k.partition(".")[0] == request for k in keys) > 1
    return f"request {request}" + (f" · sample {sample}" if several else "")


def mix(a: QColor, b: QColor, t: float) -> QColor:
    return QColor(*(round(x + (y - x) * t) for x, y in zip(a.getRgb()[:3], b.getRgb()[:3])))


def free_colours(palette: QPalette) -> tuple[QColor, QColor, QColor]:
    """(background, free block fill, free block outline) from the theme's colours, so free blocks show on a
    light and a dark background alike (a fixed near-white vanished on the light theme)."""
    base, text = palette.color(QPalette.Base), palette.color(QPalette.Text)
    return base, mix(base, text, 0.08), mix(base, text, 0.4)


class BlockMap(QWidget):
    """The pool's blocks as square cells, as large as the space allows (and no taller than they need); a
    shared block is split in its holders' colours, a partly filled one partly coloured, one the prefix cache
    served has a dot; hovering a cell says what it holds."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.snap: MemorySnapshot | None = None
        self.shown: list[int] = []  # block ids drawn, in order
        self.colours: dict[int, list[QColor]] = {}  # held or cached blocks' colours (one per holder); the rest free
        self.labels: dict[str, str] = {}  # sequence key -> label
        self.holders: dict[int, list[tuple[str, int]]] = {}  # block -> (sequence key, its index in the table)
        self.hits: set[int] = set()
        self.setMinimumHeight(44)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def set_blocks(self, snap: MemorySnapshot, shown: list[int], colours: dict, labels: dict) -> None:
        old = self.snap
        if old is None or snap.block_tables is not old.block_tables or snap.prefix_hits != old.prefix_hits:
            self.holders, self.hits = {}, set()
            for key, blocks in snap.block_tables.items():
                for i, b in enumerate(blocks):
                    self.holders.setdefault(b, []).append((key, i))
                self.hits.update(blocks[:snap.prefix_hits.get(key, 0)])
        self.snap, self.shown, self.colours, self.labels = snap, shown, colours, labels
        self._fit_height()
        self.update()

    def _fit_height(self) -> None:
        """No taller than the shown blocks need at the largest cell: the rest of the panel gets the space."""
        rows = -(-len(self.shown) // max((self.width() - 4) // CELL_MAX, 1))
        self.setMaximumHeight(max(self.minimumHeight(), rows * CELL_MAX + 4))

    def resizeEvent(self, event) -> None:
        if event.size().width() != event.oldSize().width():
            self._fit_height()
        super().resizeEvent(event)

    def clear(self) -> None:
        self.snap, self.shown, self.colours, self.holders, self.hits = None, [], {}, {}, set()
        self.update()

    # -- geometry -----------------------------------------------------------------------------
    def cell_size(self) -> int:
        """The largest cell (within CELL_MIN..CELL_MAX) at which every shown block fits the widget."""
        n, w, h = len(self.shown), self.width() - 4, self.height() - 4
        for s in range(CELL_MAX, CELL_MIN, -1):
            if -(-n // max(w // s, 1)) * s <= h:
                return s
        return CELL_MIN

    def block_at(self, pos: QPoint) -> int | None:
        s = self.cell_size()
        column, row = (pos.x() - 2) // s, (pos.y() - 2) // s
        i = row * max((self.width() - 4) // s, 1) + column
        return self.shown[i] if 0 <= column < (self.width() - 4) // s and 0 <= i < len(self.shown) else None

    def free_colours(self) -> tuple[QColor, QColor, QColor]:
        return free_colours(self.palette())

    # -- what a block holds -------------------------------------------------------------------
    def filled(self, block: int) -> int:
        """Slots of the block holding K/V (the fullest holder decides)."""
        size, tokens = self.snap.kv_block_size, self.snap.sequence_tokens
        return max((min(size, tokens.get(key, 10**9) - i * size) for key, i in self.holders.get(block, ())),
                   default=size)

    def tooltip(self, block: int) -> str:
        snap = self.snap
        holders, size = self.holders.get(block, []), snap.kv_block_size
        if not holders:
            if block in snap.cached_blocks:
                return (f"Block {block}: cached prefix\nNo sequence holds it: kept so that a later prompt that "
                        f"starts the same way up to here skips computing its {size} tokens (the least recently "
                        f"used go first when no block is free)")
            return f"Block {block}: free"
        refs = snap.block_refs[block] if snap.block_refs else len(holders)
        lines = [f"Block {block}: " + " and ".join(self.labels.get(k, k) for k, _ in holders)]
        for key, i in holders:
            n = max(min(size, snap.sequence_tokens.get(key, (i + 1) * size) - i * size), 0)
            lines.append(f"{self.labels.get(key, key)}: tokens {i * size}–{i * size + n - 1} ({n} of {size} slots)")
        lines.append(f"reference count {refs}" + (" (shared: written once, read by each)" if refs > 1 else ""))
        if block in self.hits:
            lines.append("prefix-cache hit: served from an earlier request's blocks, not computed again")
        elif block in snap.prefix_blocks:
            lines.append("in the prefix cache: a later prompt starting with these tokens reuses it")
        return "\n".join(lines)

    def event(self, e) -> bool:
        if e.type() == QEvent.ToolTip:
            block = self.block_at(e.pos()) if self.snap is not None else None
            QToolTip.showText(e.globalPos(), self.tooltip(block), self) if block is not None else QToolTip.hideText()
            return True
        return super().event(e)

    def paintEvent(self, _) -> None:
        p = QPainter(self)
        background, free_fill, free_pen = self.free_colours()
        p.fillRect(self.rect(), background)
        if self.snap is None or not self.shown:
            p.setPen(self.palette().color(QPalette.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignCenter | Qt.TextWordWrap,
                       "No KV blocks in use yet." if self.snap is not None else "No model loaded.")
            return
        s, size = self.cell_size(), self.snap.kv_block_size
        columns, gap = max((self.width() - 4) // s, 1), 1 if s >= 6 else 0
        for i, block in enumerate(self.shown):
            cell = QRectF(2 + (i % columns) * s, 2 + (i // columns) * s, s - gap, s - gap)
            colours = self.colours.get(block)
            if colours is None:
                p.setPen(QPen(free_pen, 1))
                p.setBrush(free_fill)
                p.drawRect(cell.adjusted(0.5, 0.5, -0.5, -0.5))
                continue
            filled = self.filled(block) if self.holders.get(block) else size
            height = cell.height() / len(colours)
            for j, colour in enumerate(colours):  # a shared block: a band per holder
                band = QRectF(cell.x(), cell.y() + j * height, cell.width(), height)
                p.fillRect(band, mix(colour, background, 0.65) if filled < size else colour)
                if filled < size:  # a sequence's last block: only its filled slots in full colour
                    p.fillRect(QRectF(band.x(), band.y(), band.width() * filled / size, height), colour)
            if block in self.hits and s >= 8:
                p.setPen(Qt.NoPen)
                p.setBrush(background)
                p.drawEllipse(cell.center(), s / 8, s / 8)


class WeightsBar(QWidget):
    """The model's weights as one bar, a segment per dtype, each as wide as its share of the bytes."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.segments: list[tuple[str, int]] = []
        self.setFixedHeight(22)

    def set_weights(self, weight_bytes: dict) -> None:
        self.segments = weight_segments(weight_bytes)
        self.setToolTip("\n".join(f"{kind}: {mb(n)}" for kind, n in self.segments))
        self.update()

    def paintEvent(self, _) -> None:
        p = QPainter(self)
        total, x = sum(n for _, n in self.segments), 0.0
        p.fillRect(self.rect(), self.palette().color(QPalette.Base))
        for i, (kind, n) in enumerate(self.segments):
            width = self.width() * n / total
            colour = QColor(DTYPE_COLOURS.get(kind, SEQUENCE_COLOURS[-1 - i % 3]))
            rect = QRectF(x, 0, width, self.height())
            p.fillRect(rect, colour)
            label = f"{kind} {mb(n)}"
            if p.fontMetrics().horizontalAdvance(label) + 8 < width:
                p.setPen(QColor("white"))
                p.drawText(rect, Qt.AlignCenter, label)
            x += width


class CountAxis(pg.AxisItem):
    """An axis of whole counts (snapshot numbers): only integer ticks. pyqtgraph's own choice labelled
    0, 0.5, 1 — half a snapshot means nothing."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 (pyqtgraph's names)
        levels, seen = [], set()
        for spacing, values in super().tickValues(minVal, maxVal, size):
            whole = [v for v in values if float(v).is_integer() and v not in seen]
            seen.update(whole)
            if whole:
                levels.append((max(spacing, 1.0), whole))
        return levels


class MemoryPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._states: list[str] = []
        self._snap: MemorySnapshot | None = None
        self._rss: deque[float] = deque(maxlen=HISTORY)
        self._cuda: deque[float] = deque(maxlen=HISTORY)
        self._reserved: deque[float] = deque(maxlen=HISTORY)
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.headline = QLabel("<b>KV cache</b>")
        self.block_map = BlockMap()
        self.show_all = QCheckBox("Show every block of the pool")
        self.show_all.setToolTip("Off: only the blocks that hold K/V (in use or cached), as large as they fit")
        self.show_all.toggled.connect(lambda _: self._snap is not None and self._draw_map(self._snap))
        self.legend = QLabel("", wordWrap=True)
        self.figures = QLabel("No model loaded.", wordWrap=True)
        self.weights_label = QLabel("", wordWrap=True)
        self.weights_bar = WeightsBar()
        self.curves = pg.PlotWidget(title="process memory", axisItems={"bottom": CountAxis("bottom")})
        self.curves.setLabel("left", "MB")
        self.curves.setLabel("bottom", "snapshot (two a second while generating)")
        # Bottom right, on a backing: memory mostly grows, so that corner is the one a curve leaves free,
        # and where it does not the names still read (top left, the default, sat on the rising curve).
        backing = QColor(self.palette().color(QPalette.Base))
        backing.setAlpha(200)
        self.curves.addLegend(offset=(-8, -8), brush=pg.mkBrush(backing))
        self.curves.setMinimumHeight(140)
        self.curves.getAxis("left").enableAutoSIPrefix(False)
        self.rss_curve_item = self.curves.plot(pen=pg.mkPen("#2e86de", width=2), name="process RSS")
        self.cuda_curve_item = self.reserved_curve_item = None  # added with the first CUDA snapshot

    def _layout(self) -> None:
        # Stacked: the panel lives in the right-hand dock, narrow and tall.
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addWidget(self.block_map, 3)
        layout.addWidget(self.show_all)
        layout.addWidget(self.legend)
        layout.addWidget(self.figures)
        layout.addWidget(self.weights_label)
        layout.addWidget(self.weights_bar)
        layout.addWidget(self.curves, 2)

    # -- API ----------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget everything shown (a model switch: the next snapshot is the new model's)."""
        self._states, self._snap = [], None
        self._rss.clear()
        self._cuda.clear()
        self._reserved.clear()
        self.rss_curve_item.setData(np.zeros(0))
        self._show_cuda(False)
        self.block_map.clear()
        self.weights_bar.set_weights({})
        for label in (self.legend, self.weights_label):
            label.setText("")
        self.headline.setText("<b>KV cache</b>")
        self.figures.setText("No model loaded.")

    def show_memory(self, snap: MemorySnapshot) -> None:
        self._states = self._block_states(snap)
        self._snap = snap
        self._draw_map(snap)  # every call: the tokens a block holds change with every step
        self._rss.append(snap.process_rss / 1e6)
        self._cuda.append(snap.cuda_allocated / 1e6)
        self._reserved.append(snap.cuda_reserved / 1e6)
        self.rss_curve_item.setData(np.array(self._rss))
        if self._show_cuda(any(self._reserved) or any(self._cuda)):
            self.cuda_curve_item.setData(np.array(self._cuda))
            self.reserved_curve_item.setData(np.array(self._reserved))
        self.headline.setText(f"<b>KV cache</b>: {snap.kv_blocks_used} of {snap.kv_blocks_total} blocks in use, "
                              f"{snap.kv_block_size} tokens each")
        self.figures.setText(
            f"{snap.kv_blocks_shared} shared, {snap.kv_blocks_cached_free} cached, {snap.kv_blocks_free} free · "
            f"{mb(snap.kv_used_bytes)} for {snap.kv_tokens} tokens, {snap.kv_waste_pct:.1f}% of it empty slots<br>"
            f"contiguous max-length caches would reserve {mb(snap.kv_contiguous_bytes)}<br>"
            + latent_line(snap)
            + (f"<b>Draft model's own KV cache</b>: {snap.draft_blocks_used} of {snap.draft_blocks_total} blocks, "
               f"{mb(snap.draft_blocks_used * snap.draft_bytes_per_block)}<br>" if snap.draft_blocks_total else "")
            + f"<b>Process RSS</b>: {mb(snap.process_rss)}"
            + (f" · <b>CUDA</b>: {mb(snap.cuda_allocated)} allocated, {mb(snap.cuda_reserved)} reserved"
               if snap.cuda_reserved else ""))
        self.weights_label.setText(f"<b>Weights</b>: {weights_text(snap.weight_bytes) or '—'}")
        self.weights_bar.set_weights(snap.weight_bytes)

    # Data as drawn, for tests.
    def block_states(self) -> list[str]:
        return list(self._states)

    def rss_curve(self) -> np.ndarray:
        return np.array(self._rss)

    def curve_names(self) -> list[str]:
        """The curves the plot's legend lists."""
        return [label.text for _, label in self.curves.plotItem.legend.items]

    def _show_cuda(self, shown: bool) -> bool:
        """Add the CUDA curves (and their legend entries) or remove them; returns `shown`."""
        if shown and self.cuda_curve_item is None:
            self.cuda_curve_item = self.curves.plot(pen=pg.mkPen("#e67e22", width=2), name="CUDA allocated")
            self.reserved_curve_item = self.curves.plot(pen=pg.mkPen("#e67e22", width=1, style=Qt.DashLine),
                                                        name="CUDA reserved")
        elif not shown and self.cuda_curve_item is not None:
            for item in (self.cuda_curve_item, self.reserved_curve_item):
                self.curves.removeItem(item)  # its legend entry goes with it
            self.cuda_curve_item = self.reserved_curve_item = None
        return shown

    # -- drawing ------------------------------------------------------------------------------
    @staticmethod
    def _block_states(snap: MemorySnapshot) -> list[str]:
        states = ["free"] * snap.kv_blocks_total
        for b in snap.cached_blocks:
            states[b] = "cached"
        for key, blocks in snap.block_tables.items():
            for b in blocks:
                states[b] = "shared" if snap.block_refs and snap.block_refs[b] > 1 else f"used:{key}"
        return states

    def _draw_map(self, snap: MemorySnapshot) -> None:
        keys = list(snap.block_tables)
        labels = {k: sequence_label(k, keys) for k in keys}
        # The chat's own sequence first, so it keeps the first colour whatever else runs beside it.
        keys.sort(key=lambda k: (labels[k] != "this conversation", k))
        colour_of = {k: QColor(SEQUENCE_COLOURS[i % len(SEQUENCE_COLOURS)]) for i, k in enumerate(keys)}
        colours = {b: [QColor(CACHED_COLOUR)] for b in snap.cached_blocks}
        for k in keys:
            for b in snap.block_tables[k]:
                colours.setdefault(b, []).append(colour_of[k])
        shown = list(range(len(self._states))) if self.show_all.isChecked() else sorted(colours)
        self.block_map.set_blocks(snap, shown, colours, labels)
        hidden = len(self._states) - len(shown)
        self.show_all.setText(f"Show all {len(self._states)} blocks ({hidden} free not shown)" if hidden
                              else f"Show all {len(self._states)} blocks")
        _, _, free_pen = free_colours(self.palette())  # the map's own is updated after this panel's
        swatch = lambda c, t: f"<span style='color:{c.name()}'>■</span>&nbsp;{t}"  # noqa: E731
        items = [f"<span style='color:{free_pen.name()}'>□</span>&nbsp;free",
                 swatch(QColor(CACHED_COLOUR), "cached prefix")]
        items += [swatch(colour_of[k], labels[k]) for k in keys[:6]]
        if self.block_map.hits:
            items.append("●&nbsp;prefix-cache hit")
        notes = ["hover a block for what it holds", "a faded part: slots not yet written"]
        if snap.kv_blocks_shared:
            notes.append("a block in two colours is shared")
        grey = self.palette().color(QPalette.PlaceholderText).name()
        self.legend.setText(" &nbsp; ".join(items) + f"<br><span style='color:{grey}'>{'; '.join(notes)}</span>")

    def changeEvent(self, event) -> None:
        if event.type() == QEvent.PaletteChange and self._snap is not None:  # the theme changed: re-tint free
            self._draw_map(self._snap)
        super().changeEvent(event)
