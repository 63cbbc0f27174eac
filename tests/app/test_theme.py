"""Both themes keep placeholder text readable: its colour against the text fields' base colour."""
import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QPlainTextEdit

from app.theme import apply_theme


def luminance(colour) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF()) + 0.0722 * channel(colour.blueF())


def contrast(a, b) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("dark", [False, True])
def test_placeholder_text_is_readable(qtbot, dark):
    app = QApplication.instance()
    before = app.palette()
    try:
        apply_theme(app, dark)
        field = QPlainTextEdit(placeholderText="Message")  # the chat input's kind of field
        qtbot.addWidget(field)
        palette = field.palette()
        for group in (QPalette.Active, QPalette.Inactive):
            placeholder, base = palette.color(group, QPalette.PlaceholderText), palette.color(group, QPalette.Base)
            assert placeholder.alpha() == 255  # no blending that would fade it
            assert contrast(placeholder, base) >= 4.5, (dark, placeholder.name(), base.name())
            # still reads as a hint, not as typed text
            assert contrast(placeholder, base) < contrast(palette.color(group, QPalette.Text), base)
    finally:
        app.setPalette(before)
