"""This session's conversation kept on disk, and the last one's offered back (the file format and the
atomic writes are app/autosave.py's). Saves after the user's message, after every reply and after edits, deletions and branch switches
(every branch is kept), and every
few seconds while a reply streams; at start, offers an unsaved conversation back and shows notices
about files that could not be read (settings, autosaves) and were set aside. GUI thread only; reads
the conversation through ChatController's public state and methods."""
from __future__ import annotations

import os
import time

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QMessageBox

from app.autosave import Autosave, Snapshot

# While a reply streams, its text so far is autosaved this often (a kill loses at most this much of it).
AUTOSAVE_SECONDS = float(os.environ.get("GLASSBOX_AUTOSAVE_SECONDS", "3"))


class SessionAutosave(QObject):
    def __init__(self, window, controller, models, folder, offer_restore: bool = True, notices=()):
        super().__init__(window)
        self.controller, self.models = controller, models
        self.autosaver = Autosave(folder)
        self.saved_partial = ""  # the streaming reply as the last save had it
        self.timer = QTimer(self, interval=int(AUTOSAVE_SECONDS * 1000), timeout=self.save_partial)
        self.timer.start()
        self.notices = list(notices)
        self.restore_offer: QMessageBox | None = None
        self.notice_box: QMessageBox | None = None
        if offer_restore:
            snapshot, found = self.autosaver.take_unsaved()
            self.notices += found
            if snapshot is not None:
                self._offer_restore(snapshot)
        if self.notices:
            self._show_notices()

    @property
    def window(self):
        """The window, as Qt's parent (not an attribute: no reference cycle, see app/main_window.py)."""
        return self.parent()

    def save(self, *_) -> None:
        """After every turn (and the user's message): the conversation survives a crash or a kill."""
        self.saved_partial = self.controller.streaming_reply()
        self.autosaver.save(self.window.chat.system.text(), self.controller.messages, self.saved_partial,
                            self.models.name, tree=self.controller.tree, title=self.controller.title)
        if self.autosaver.error:  # the previous write failed: a full or read-only disk
            self.window.statusBar().showMessage(f"Autosave failed: {self.autosaver.error}", 10_000)

    def save_partial(self) -> None:
        """Timer tick: save only when the streaming reply grew since the last save."""
        if self.controller.busy and self.controller.streaming_reply() != self.saved_partial:
            self.save()

    def close(self) -> None:
        self.timer.stop()
        self.autosaver.close()  # the queued saves reach the disk

    # -- at start -----------------------------------------------------------------------------
    def _offer_restore(self, snapshot: Snapshot) -> None:
        """Non-modal, so it neither blocks the start nor a self-test that watches for modal dialogs."""
        turns = sum(m["role"] == "user" for m in snapshot.messages)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(snapshot.saved_at))
        cut = " Its last reply was cut short." if snapshot.partial else ""
        box = QMessageBox(QMessageBox.Question, "Restore the last conversation?",
                          f"Glassbox found a conversation of {turns} turn(s) that was not closed properly "
                          f"(saved {when}).{cut} Restore it?", QMessageBox.NoButton, self.window)
        box.restore_button = box.addButton("Restore", QMessageBox.AcceptRole)
        box.discard_button = box.addButton("Discard", QMessageBox.RejectRole)
        box.setModal(False)
        box.buttonClicked.connect(lambda button: self._restore(snapshot, button is box.restore_button))
        self.restore_offer = box
        box.show()

    def _restore(self, snapshot: Snapshot, accepted: bool) -> None:
        self.restore_offer = None
        if accepted and not self.controller.busy:
            self.controller.open(snapshot.path, interrupted_reply=snapshot.partial)
            self.window.statusBar().showMessage("Conversation restored", 5000)
            self.save()
        self.autosaver.forget(snapshot)

    def _show_notices(self) -> None:
        self.window.statusBar().showMessage(self.notices[-1], 30_000)
        box = QMessageBox(QMessageBox.Warning, "Glassbox started with defaults", "\n\n".join(self.notices),
                          QMessageBox.Ok, self.window)
        box.setModal(False)
        self.notice_box = box
        box.show()
