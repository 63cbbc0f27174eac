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
