"""Markdown replies in the chat panel: rendered while streaming, line by line, and every token still its own
link (a click on each gives that token's step); headings, lists and code blocks render as such; a code
block's copy link copies its code; the token view (Markdown off) shows the markup as generated."""
from __future__ import annotations

from PySide6.QtCore import QUrl
from PySide6.QtGui import QGuiApplication, QTextFormat

from widgets.chat import ChatPanel, MessageView, plain_text
from widgets.chat.markdown import parse_line

REPLY = ["##", " Plan", "\n", "-", " **", "first", "**", " step", "\n", "-", " use", " `", "x", "`", "\n",
         "```", "py", "\n", "print", "(1)", "\n", "```", "\n", "Done", "."]


def anchors(panel) -> list[tuple[str, str, object]]:
    """(href, text, char format) of every link in the transcript, in order."""
    found, block = [], panel.transcript.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().isAnchor():
                found.append((fragment.charFormat().anchorHref(), fragment.text(), fragment.charFormat(), block))
            it += 1
        block = block.next()
    return found


def heading_size(fmt) -> float:
    """A run's size as Qt keeps it: CSS's "large" is a size adjustment, px/pt a point size."""
    return fmt.fontPointSize() + 100 * (fmt.intProperty(QTextFormat.FontSizeAdjustment))


def stream(qtbot, ticks) -> ChatPanel:
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.set_busy(True)
    panel.begin_assistant()
    tokens = [(i, text, 0.9) for i, text in enumerate(REPLY)]
    for start in range(0, len(tokens), ticks):
        panel.append_tokens(tokens[start:start + ticks])
    return panel


def test_every_token_stays_a_link_and_clicks_give_its_step(qtbot):
    panel = stream(qtbot, 3)
    links = [a for a in anchors(panel) if a[0].startswith("step:")]
    visible = {i for i, text in enumerate(REPLY) if text.strip("\n")}
    assert {int(href[5:]) for href, *_ in links} == visible  # markup-only tokens: a thin link, not dropped
    clicked = []
    panel.step_clicked.connect(clicked.append)
    for href, *_ in links:
        panel._on_anchor(QUrl(href))
    assert set(clicked) == visible


def test_headings_lists_and_code_render_as_such_while_streaming_as_drawn_at_once(qtbot):
    streamed = stream(qtbot, 2)
    whole = ChatPanel()
    qtbot.addWidget(whole)
    whole.set_busy(True)
    whole._live = [(i, text, 0.9) for i, text in enumerate(REPLY)]
    whole._render()
    assert streamed.transcript_text() == whole.transcript_text()
    text = streamed.transcript_text().replace("\u2009", "")  # markup-only tokens are thin spaces
    assert "## Plan" not in text and "Plan" in text and "• first step" in text and "**" not in text.replace("\u258d", "")
    links = {a[1]: a for a in anchors(streamed)}
    assert links["Plan"][2].fontWeight() >= 600 and heading_size(links["Plan"][2]) > heading_size(links["Done"][2])
    assert links["first"][2].fontWeight() >= 600  # bold, its ** hidden
    assert "monospace" in (links["x"][2].fontFamilies() or [""])[0].lower() or links["x"][2].fontFixedPitch()
    assert links["print"][3].blockFormat().background().color().alpha() > 0  # a code block's paragraph
    assert links[" step"][3].blockFormat().leftMargin() > 0  # a list item is indented
    assert [a[0] for a in anchors(streamed) if a[0].startswith("code:")] == ["code:live:0"]
    streamed._on_anchor(QUrl("code:live:0"))
    assert QGuiApplication.clipboard().text() == "print(1)"


def test_finished_replies_render_markdown_and_the_token_view_shows_the_markup(qtbot):
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.show_conversation([MessageView("user", "**not markdown**", markdown=False, key=1),
                             MessageView("assistant", "".join(REPLY), [(i, t, 0.5) for i, t in enumerate(REPLY)],
                                         key=2, position=(2, 3), token_count=len(REPLY))])
    text = panel.transcript_text().replace("\u2009", "")
    assert "**not markdown**" in text and "• first step" in text and "2/3" in text and f"{len(REPLY)} tokens" in text
    hrefs = [a[0] for a in anchors(panel)]
    assert {"edit:1", "copy:2", "md:2", "del:2", "regen:2", "nav:2:-1", "nav:2:1"} <= set(hrefs)
    panel.markdown.setChecked(False)
    assert "**first** step" in panel.transcript_text() and "```py" in panel.transcript_text()


def test_plain_text_and_tables():
    assert plain_text("# T\n- **a** and *b*\n```\ncode **x**\n```") == "T\n• a and b\ncode **x**"
    line, _ = parse_line("| a | b |", False)
    assert line.kind == "table" and line.shown_as[0] == "│"


def test_context_meter_warns_when_a_message_would_not_fit(qtbot):
    panel = ChatPanel()
    qtbot.addWidget(panel)
    assert panel.context_meter.isHidden()
    panel.set_context(100, 2048, pending=20)
    # what sending the draft would take: the conversation's 100 and the draft's 20 (review of issue 20)
    assert not panel.context_meter.isHidden() and panel.context_meter.format() == "120 / 2048 tokens"
    assert panel.context_meter.value() == 120
    assert not panel.context_warning()
    panel.set_context(2000, 2048, pending=60)
    assert panel.context_warning() and "would not fit" in panel.context_meter.toolTip()


def test_a_full_context_meter_shows_its_whole_warning(qtbot):
    """Seen at 1366x768 on a 256-token model: the meter read "257 / 256 tokens — won'" (clipped)."""
    panel = ChatPanel()
    qtbot.addWidget(panel)
    for used, limit in ((257, 256), (131072, 131072)):  # a 128k context's figures too (Gemma 3, Phi-3)
        panel.set_context(used, limit)
        meter = panel.context_meter
        assert panel.context_warning()
        assert meter.fontMetrics().horizontalAdvance(meter.format()) + 12 <= meter.minimumWidth() <= meter.maximumWidth()
    panel.set_context(10, 256)
    assert panel.context_meter.format() == "10 / 256 tokens" and panel.context_meter.minimumWidth() == 150


def test_a_clicked_token_is_marked_in_the_transcript_and_stays_marked_after_a_re_render(qtbot):
    """Seen at 1366x768: a click re-aimed the panels ("Token 52 …") but nothing in the chat said which token."""
    panel = stream(qtbot, 3)
    panel.end_assistant()
    step = REPLY.index("Done")
    panel._on_anchor(QUrl(f"step:{step}"))
    marks = panel.transcript.extraSelections()
    assert len(marks) == 1 and marks[0].cursor.selectedText() == REPLY[step]
    panel.colour_tokens.toggle()  # a full re-render: the mark is found again
    marks = panel.transcript.extraSelections()
    assert len(marks) == 1 and marks[0].cursor.selectedText() == REPLY[step]
    panel.clear()
    assert panel.transcript.extraSelections() == [] and panel.marked_step is None


def test_the_mark_is_dropped_when_another_branch_gives_its_index_to_another_token(qtbot):
    from widgets.chat.transcript import MessageView

    panel = ChatPanel()
    qtbot.addWidget(panel)
    reply = [(0, "Hello", 0.9), (1, " there", 0.8)]
    panel.show_conversation([MessageView("assistant", "Hello there", reply)])
    panel._on_anchor(QUrl("step:1"))
    assert [m.cursor.selectedText() for m in panel.transcript.extraSelections()] == [" there"]
    panel.show_conversation([MessageView("assistant", "Hello there", reply + [(2, "!", 0.7)])])  # the path grew
    assert [m.cursor.selectedText() for m in panel.transcript.extraSelections()] == [" there"]
    panel.show_conversation([MessageView("assistant", "Hi you", [(0, "Hi", 0.9), (1, " you", 0.4)])])  # a switch
    assert panel.transcript.extraSelections() == [] and panel.marked_step is None
