"""Autosave and bad files at start (issue 10): atomic writes that leave the old file whole when a write
fails; the conversation saved after every turn and while a reply streams; a restore offer that can be
taken or declined; corrupt settings and corrupt autosaves kept aside, never overwritten, with the app
starting on defaults and saying so."""
from __future__ import annotations

import json
import os

import pytest
from PySide6.QtCore import QByteArray

from app.autosave import Autosave
from app import files as files_module
from app.files import atomic_write
from app.main_window import MainWindow
from app.settings import Settings
from engine.records import LoadOptions, SamplingParams

TIMEOUT = 60_000
GARBAGE = b"\x00\xff\xfe{[ not json, not ini \x00\x01"


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write(path, "old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files_module.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]  # no temp file left behind
    monkeypatch.undo()
    atomic_write(path, "new")
    assert path.read_text() == "new"


def test_atomic_write_syncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(files_module.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    atomic_write(tmp_path / "b.json", "x")
    assert len(synced) == 2  # the data, then the folder entry that names it


def test_unsaved_conversations_are_offered_once_and_bad_ones_set_aside(tmp_path):
    saver = Autosave(tmp_path)
    saver.save("Be brief.", [{"role": "user", "content": "hi"}], partial="Hel")
    saver.flush()  # writes run on a background thread
    snapshot, notices = Autosave(tmp_path).take_unsaved()
    assert notices == [] and snapshot.messages == [{"role": "user", "content": "hi"}] and snapshot.partial == "Hel"
    assert not (tmp_path / "autosave.json").exists()  # moved away: this session's autosaves cannot clobber it
    saver.save("", [{"role": "user", "content": "newer"}])  # this session writes while the offer is open
    saver.flush()
    assert snapshot.path.is_file() and "hi" in snapshot.path.read_text()
    saver.forget(snapshot)
    (tmp_path / "autosave.json").write_bytes(GARBAGE)
    snapshot, notices = Autosave(tmp_path).take_unsaved()
    assert snapshot is None  # the only file was unreadable
    kept = list(tmp_path.glob("*.corrupt-*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE  # kept aside, byte for byte
    assert "could not be read" in notices[0] and str(kept[0]) in notices[0]


@pytest.fixture
def folders(tmp_path):
    return tmp_path / "data", tmp_path / "settings.ini"


def window_for(qtbot, folders, **kwargs) -> MainWindow:
    data, ini = folders
    window = MainWindow(settings=Settings(path=str(ini)), autoload=False, data_dir=data, **kwargs)
    qtbot.addWidget(window)
    return window


def test_corrupt_settings_start_with_defaults_and_say_so(qtbot, folders):
    data, ini = folders
    ini.write_bytes(GARBAGE)
    window = window_for(qtbot, folders)
    try:
        kept = list(ini.parent.glob("settings.corrupt-*.ini"))
        assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE
        assert window.session.notices and "settings file could not be read" in window.session.notices[0]
        assert window.session.notice_box.isVisible() and not window.session.notice_box.isModal()
        assert window.sampler.params() == SamplingParams()  # defaults
    finally:
        window.close()  # writes fresh settings, never over the kept file
    assert kept[0].read_bytes() == GARBAGE and ini.is_file() and b"\x00" not in ini.read_bytes()


def test_wrongly_typed_settings_fall_back_per_value(qtbot, folders):
    data, ini = folders
    settings = Settings(path=str(ini))
    settings.q.setValue("models/recent", 5)
    settings.q.setValue("window/geometry", "not a geometry")
    settings.q.setValue("sampler/temperature", "hot")
    settings.sync()
    window = window_for(qtbot, folders)
    try:
        assert window.settings.recent_models() == [] and not window.session.notices
        assert window.sampler.params().temperature == SamplingParams().temperature
        window.settings.q.setValue("window/geometry", QByteArray(b"\x01\x02"))  # wrong bytes: Qt ignores them
        window.settings.restore_window(window)
    finally:
        window.close()


def test_corrupt_autosave_is_kept_aside_and_the_app_starts_empty(qtbot, folders):
    data, _ = folders
    data.mkdir()
    (data / "autosave.json").write_text('{"format": "glassbox-conversation/1", "messages": [{"role": 7}]}')
    window = window_for(qtbot, folders)
    try:
        assert window.session.restore_offer is None and window.controller.messages == []
        assert "could not be read" in window.session.notices[0]
        kept = list(data.glob("*.corrupt-*.json"))
        assert len(kept) == 1 and '"role": 7' in kept[0].read_text()
    finally:
        window.close()


def test_restore_offer_can_be_declined(qtbot, folders):
    data, _ = folders
    saver = Autosave(data)
    saver.save("", [{"role": "user", "content": "old"}, {"role": "assistant", "content": "reply"}])
    saver.flush()
    window = window_for(qtbot, folders)
    try:
        window.session.restore_offer.discard_button.click()
        assert window.controller.messages == [] and not list(data.glob("unsaved-*.json"))
    finally:
        window.close()
    window = window_for(qtbot, folders)  # declined: not offered again
    try:
        assert window.session.restore_offer is None
    finally:
        window.close()


def test_saved_after_every_turn_and_while_a_reply_streams(qtbot, folders, hf_checkpoint):
    data, _ = folders
    directory, _ = hf_checkpoint("llama")
    window = window_for(qtbot, folders)
    try:
        window.session.timer.setInterval(50)
        with qtbot.waitSignal(window.worker.loaded, timeout=TIMEOUT):
            window.load_model(str(directory), LoadOptions(device="cpu"))
        qtbot.waitUntil(window.chat.send_button.isEnabled, timeout=10_000)
        # A long reply (the tiny model's context is 256): periodic saves must see it streaming, on a slow
        # first run too (cold caches make the first ticks slow).
        window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=200, ignore_eos=True))
        partials = []
        timer_saves = window.session.save_partial

        def spy():
            timer_saves()
            window.session.autosaver.flush()
            saved = json.loads((data / "autosave.json").read_text())
            partials.append(saved["partial"])

        window.session.timer.timeout.disconnect()
        window.session.timer.timeout.connect(spy)
        with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT):
            window.chat.input.setPlainText("t1 t2 t3")
            window.chat.send_button.click()
            window.session.autosaver.flush()
            saved = json.loads((data / "autosave.json").read_text())
            assert saved["messages"] == [{"role": "user", "content": "t1 t2 t3"}]  # the user's turn, at once
        qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
        window.session.autosaver.flush()
        saved = json.loads((data / "autosave.json").read_text())
        assert saved["partial"] == "" and [m["role"] for m in saved["messages"]] == ["user", "assistant"], saved
        reply = saved["messages"][-1]["content"]
        growing = [p for p in partials if p]
        # each periodic save: the reply so far
        assert growing and all(reply.startswith(p) for p in growing), (reply, partials)
    finally:
        window.close()


def test_a_normal_close_marks_the_autosave_and_the_next_start_offers_nothing(qtbot, folders):
    data, _ = folders
    window = window_for(qtbot, folders)
    window.controller.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    window.session.save()
    window.close()
    saved = json.loads((data / "autosave.json").read_text())
    assert saved["clean_exit"] is True and saved["messages"][-1]["content"] == "hello"
    window = window_for(qtbot, folders)
    try:
        assert window.session.restore_offer is None and not window.session.notices
        assert not list(data.glob("unsaved-*.json")) and not (data / "autosave.json").exists()
    finally:
        window.close()


def test_only_an_unclosed_session_is_offered(tmp_path):
    crashed = Autosave(tmp_path / "crashed")
    crashed.save("", [{"role": "user", "content": "lost"}], partial="Hal")
    crashed.flush()  # no close(): as after a crash or a kill
    assert json.loads((tmp_path / "crashed" / "autosave.json").read_text())["clean_exit"] is False
    snapshot, _ = Autosave(tmp_path / "crashed").take_unsaved()
    assert snapshot is not None and snapshot.partial == "Hal" and not snapshot.clean_exit
    closed = Autosave(tmp_path / "closed")
    closed.save("", [{"role": "user", "content": "kept"}])
    closed.close()
    closed.save("", [{"role": "user", "content": "kept"}, {"role": "assistant", "content": "late"}])  # after close
    saved = json.loads((tmp_path / "closed" / "autosave.json").read_text())
    assert saved["clean_exit"] is True and saved["messages"][-1]["content"] == "late"
    assert Autosave(tmp_path / "closed").take_unsaved() == (None, [])
    assert not list((tmp_path / "closed").iterdir())  # nothing pending, nothing kept
