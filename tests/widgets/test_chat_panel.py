"""The chat panel: Esc asks to stop (a real key press), and a reopened conversation's tool calls and tool
results are drawn as the live chat drew them."""
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from widgets.chat_panel import ChatPanel


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
