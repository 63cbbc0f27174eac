"""Kill and restore (issue 10): the real app in a subprocess (offscreen, the default model) streams a
long reply; it is killed with SIGKILL mid-generation; the autosave on disk is whole (atomic writes) and
holds the conversation up to its last save; the next start offers it back and restores exactly that."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.main_window import MainWindow
from app.settings import Settings

PROMPT = "List the numbers from one to two hundred, in words, one per line."
ROOT = Path(__file__).parents[2]


def read_autosave(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sigkill_mid_generation_then_restore(qtbot, tmp_path):
    data, config = tmp_path / "data", tmp_path / "config"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "GLASSBOX_DATA_DIR": str(data),
           "XDG_CONFIG_HOME": str(config), "GLASSBOX_AUTOSAVE_SECONDS": "0.5"}
    app = subprocess.Popen([sys.executable, "-m", "app", "--threads", "1", "--send-prompt", PROMPT], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    autosave = data / "autosave.json"
    try:
        deadline = time.monotonic() + 240
        seen = None
        while time.monotonic() < deadline and app.poll() is None:
            seen = read_autosave(autosave)
            if seen and len(seen.get("partial", "")) >= 40:  # well into the reply
                break
            time.sleep(0.2)
        assert app.poll() is None, app.stdout.read().decode(errors="replace")[-3000:]
        assert seen and len(seen["partial"]) >= 40, f"no partial reply autosaved in time: {seen}"
        app.send_signal(signal.SIGKILL)  # mid-generation: the reply runs to 4000 tokens
        app.wait(30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(30)
    assert app.returncode == -signal.SIGKILL

    on_disk = read_autosave(autosave)  # whole, never half-written: every write is temp + fsync + rename
    assert on_disk is not None and on_disk["messages"] == [{"role": "user", "content": PROMPT}]
    assert on_disk["partial"].startswith(seen["partial"])  # later saves only add to the reply

    # The next start (in this process, as a user would see it) offers the conversation and restores it.
    window = MainWindow(settings=Settings(path=str(tmp_path / "restart.ini")), autoload=False, data_dir=data)
    qtbot.addWidget(window)
    try:
        assert window.session.restore_offer is not None and window.session.restore_offer.isVisible()
        assert not window.session.restore_offer.isModal()
        window.session.restore_offer.restore_button.click()
        assert window.controller.messages == [{"role": "user", "content": PROMPT},
                                              {"role": "assistant", "content": on_disk["partial"]}]
        assert PROMPT in window.chat.transcript_text() and on_disk["partial"][:30] in window.chat.transcript_text()
        assert not list(data.glob("unsaved-*.json"))  # restored: no longer pending
        window.session.autosaver.flush()  # (writes run on a background thread)
        saved = read_autosave(autosave)  # and the restored conversation is this session's autosave now
        assert saved["messages"] == window.controller.messages
    finally:
        window.close()


# A tool conversation as the app holds it (app/chat_controller.py, app/engine_worker.py's ToolCall): the
# user's question, the model's call (empty content), the tool's result, the model's answer.
TOOL_MESSAGES = [{"role": "user", "content": "What is 17 * 23?"},
                 {"role": "assistant", "content": "",
                  "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                                   "arguments": {"expression": "17 * 23"}}}]},
                 {"role": "tool", "name": "calculator", "content": "391"},
                 {"role": "assistant", "content": "17 * 23 = 391."}]

# The app without a model, in its own process: it takes the conversation, autosaves it, says "saved", then
# either quits normally (File → Quit closes the window) or waits to be killed.
SESSION = """
import json, sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.main_window import MainWindow
from app.settings import Settings
app = QApplication([])
window = MainWindow(settings=Settings(path=sys.argv[1]), autoload=False, offer_restore=False)
window.show()
window.controller.messages = json.loads(sys.argv[2])
if len(sys.argv) > 4 and sys.argv[4] == "branch":  # an edit of the first message, with its own reply
    tree = window.controller.tree
    edited = tree.edit(tree.path()[0].id, "What is 2 + 2?")
    tree.add(edited.id, {"role": "assistant", "content": "2 + 2 = 4."})
window.session.save()
window.session.autosaver.flush()
print("saved", flush=True)
if sys.argv[3] == "quit":
    QTimer.singleShot(100, window.close)
    QTimer.singleShot(200, app.quit)
sys.exit(app.exec())
"""


def run_session(tmp_path, ending: str, *extra: str) -> Path:
    data = tmp_path / "data"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "GLASSBOX_DATA_DIR": str(data)}
    app = subprocess.Popen([sys.executable, "-c", SESSION, str(tmp_path / "first.ini"), json.dumps(TOOL_MESSAGES),
                            ending, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []  # Qt's warnings may come first
        while not lines or lines[-1] not in ("saved\n", ""):
            lines.append(app.stdout.readline())
        assert lines[-1] == "saved\n", "".join(lines)[-3000:]
        if ending == "kill":
            app.send_signal(signal.SIGKILL)
        assert app.wait(60) == (-signal.SIGKILL if ending == "kill" else 0), app.stdout.read()[-3000:]
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(30)
    return data


def test_a_killed_tool_conversation_is_offered_and_restored_whole(qtbot, tmp_path):
    data = run_session(tmp_path, "kill")
    window = MainWindow(settings=Settings(path=str(tmp_path / "restart.ini")), autoload=False, data_dir=data)
    qtbot.addWidget(window)
    try:
        assert not window.session.notices  # not set aside as corrupt
        assert window.session.restore_offer is not None and window.session.restore_offer.isVisible()
        window.session.restore_offer.restore_button.click()
        assert window.controller.messages == TOOL_MESSAGES
        shown = window.chat.transcript_text()
        assert "What is 17 * 23?" in shown and "17 * 23 = 391." in shown
    finally:
        window.close()


def test_a_normal_quit_offers_nothing_at_the_next_start(qtbot, tmp_path):
    data = run_session(tmp_path, "quit")
    window = MainWindow(settings=Settings(path=str(tmp_path / "restart.ini")), autoload=False, data_dir=data)
    qtbot.addWidget(window)
    try:
        assert window.session.restore_offer is None and not window.session.notices
        assert window.controller.messages == [] and not list(data.glob("unsaved-*.json"))
    finally:
        window.close()


def test_a_killed_branched_conversation_is_restored_with_every_branch(qtbot, tmp_path):
    """Issue 20: an edit makes a branch, and both branches survive kill → restore."""
    data = run_session(tmp_path, "kill", "branch")
    window = MainWindow(settings=Settings(path=str(tmp_path / "restart.ini")), autoload=False, data_dir=data)
    qtbot.addWidget(window)
    try:
        window.session.restore_offer.restore_button.click()
        assert window.controller.messages == [{"role": "user", "content": "What is 2 + 2?"},
                                              {"role": "assistant", "content": "2 + 2 = 4."}]
        tree = window.controller.tree
        first = tree.path()[0]
        assert tree.position(first.id) == (2, 2)  # the edit, beside the original
        tree.switch(first.id, -1)
        assert tree.messages() == TOOL_MESSAGES  # the original branch, whole
    finally:
        window.close()
