"""The chat panel: Esc asks to stop (a real key press), and a reopened conversation's tool calls and tool
results are drawn as the live chat drew them."""
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from widgets.chat import ChatPanel


def test_escape_asks_to_stop(qtbot):
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitExposed(panel)
    panel.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is panel)
    panel.input.setFocus()
    with qtbot.waitSignal(panel.stop_requested, timeout=2000):
        qtbot.keyClick(panel.input, Qt.Key_Escape)


def test_tool_messages_are_shown(qtbot):
    panel = ChatPanel()
    qtbot.addWidget(panel)
    for message in [{"role": "system", "content": "hidden"},
                    {"role": "user", "content": "What is 17 * 23?"},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function",
                                     "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}}}]},
                    {"role": "tool", "name": "calculator", "content": "391"},
                    {"role": "tool", "tool_call_id": "call_9", "content": "7"},
                    {"role": "assistant", "content": "It is 391."}]:
        panel.add_message(message)
    text = panel.transcript_text()
    assert "hidden" not in text and "What is 17 * 23?" in text and "It is 391." in text
    assert "[tool call] calculator({'expression': '17 * 23'})" in text
    assert "[calculator result] 391" in text and "[call_9 result] 7" in text


def _anchors(panel) -> list[tuple[str, str]]:
    """(href, text) of every link in the transcript, in order: each streamed token is one."""
    found, block = [], panel.transcript.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().isAnchor():
                found.append((fragment.charFormat().anchorHref(), fragment.text()))
            it += 1
        block = block.next()
    return found


def _block_tops(panel) -> list[tuple[str, float]]:
    """Each paragraph's text and where the layout puts it."""
    document, found = panel.transcript.document(), []
    panel.transcript.resize(400, 300)
    block = document.begin()
    while block.isValid():
        found.append((block.text(), document.documentLayout().blockBoundingRect(block).top()))
        block = block.next()
    return found


def test_streamed_tokens_are_appended_in_place_as_a_full_render_draws_them(qtbot):
    """Streaming appends each tick's tokens at the end (no re-render of the conversation): the transcript
    reads, and links, exactly as the same turn drawn at once; the cursor mark goes at the end of the reply."""
    tokens = [(0, "Hello", 0.9), (1, " wor", 0.4), (2, "ld", 0.7), (3, "!\n", 0.2), (4, "<b>", 0.5), (5, " ok", 1.0)]
    streamed, whole = ChatPanel(), ChatPanel()
    for panel in (streamed, whole):
        qtbot.addWidget(panel)
        panel.add_user("hi")
        panel.set_busy(True)
        panel.begin_assistant()
    rendered = []
    for batch in (tokens[:1], tokens[1:3], tokens[3:]):
        streamed.append_tokens(batch)
        rendered.append(streamed.transcript.toHtml())
    whole._live = list(tokens)
    whole._render()
    assert streamed.transcript_text() == whole.transcript_text()
    assert streamed.transcript_text().endswith("<b> ok▍")
    # One link per token and line: the reply's lines are paragraphs (Qt relayouts a whole paragraph per
    # insertion), spaced and placed exactly as the full render places them.
    assert _anchors(streamed) == _anchors(whole) == [(f"step:{i}", line) for i, text, _ in tokens
                                                     for line in text.split("\n") if line]
    # Each message's header (role, counts, actions) is a paragraph of its own: You, hi, Model, Hello world!, <b> ok
    assert _block_tops(streamed) == _block_tops(whole) and len(_block_tops(whole)) == 5
    for panel in (streamed, whole):
        panel.set_busy(False)
        panel.end_assistant("length limit")
    assert streamed.transcript_text() == whole.transcript_text()
    assert streamed.transcript_text().endswith("<b> ok [length limit]")
    streamed.colour_tokens.setChecked(False)  # a full re-render from the kept HTML: the same text
    assert streamed.transcript_text() == whole.transcript_text()
