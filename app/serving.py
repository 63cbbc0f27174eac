"""The window's server (GUI thread): Server → Serve on localhost starts uvicorn in a thread with the OpenAI
API of app/serve over the engine worker (the worker is the Backend, so served requests run in the same
engine loop as the chat), shows the address in the status line, and feeds the Requests dock. Selecting a
request there shows it in the panels through the record hub (RecordHub.watch), as a chat reply.

Bound to 127.0.0.1 unless the user chooses another host (with a warning, and never remembered: each start
is loopback again). Loading another model restarts the server, so /v1/models names the model it serves."""
from __future__ import annotations

import gc
import socket
import threading
from contextvars import ContextVar

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QDockWidget, QInputDialog, QLabel, QMessageBox

from app.engine_worker import ServedStart
from app.serve.cli import is_loopback
from app.serve.openai_request import Limits
from engine.records import RequestDone, StepRecord
from widgets.requests_panel import RequestsPanel

DEFAULT_PORT = 8080
GRACEFUL_S = 3  # a request still answering when the server stops is cut after this
_endpoint: ContextVar[str] = ContextVar("endpoint", default="")  # the HTTP path of the request being handled


class _Labelled:
    """The worker as create_app's Backend, each submission labelled with the path it came by (Requests list)."""

    def __init__(self, worker):
        self.worker, self.model = worker, worker.model

    def run(self, fn):
        return self.worker.run(fn)

    def submit(self, request, listener):
        return self.worker.submit(request, listener, _endpoint.get())

    def cancel(self, request_id: int) -> None:
        self.worker.cancel(request_id)


def _with_endpoints(app):
    async def labelled(scope, receive, send):
        token = _endpoint.set(scope.get("path", "")) if scope["type"] == "http" else None
        try:
            await app(scope, receive, send)
        finally:
            if token is not None:
                _endpoint.reset(token)
    return labelled


class Serving(QObject):
    def __init__(self, window, worker, hub, settings):
        super().__init__(window)  # the window as Qt parent, never an attribute (no cycle through it)
        self.worker, self.hub, self.q = worker, hub, settings.q
        self.host = "127.0.0.1"
        self.port = int(self.q.value("server/port", DEFAULT_PORT))
        self.url = ""  # http://host:port/v1 while serving
        self._server = self._thread = self._socket = None
        self._params: dict = {}  # request id -> the SamplingParams its client asked for
        self.panel = RequestsPanel()
        self.dock = QDockWidget("Requests", window)
        self.dock.setObjectName("Requests")
        self.dock.setWidget(self.panel)
        window.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()  # shown when serving starts: the default layout stays as it was
        self.address = QLabel()
        self.address.hide()
        window.statusBar().addPermanentWidget(self.address)
        worker.served.connect(self.on_served)
        worker.loaded.connect(self.on_model_loaded)
        self.panel.request_selected.connect(self.watch)
        self.panel.step_clicked.connect(self.select_step)

    def add_menu(self, menu_bar, view_menu) -> None:
        menu = menu_bar.addMenu("Ser&ver")
        self.toggle = menu.addAction(self._toggle_text())
        self.toggle.setCheckable(True)
        self.toggle.toggled.connect(self.set_serving)
        menu.addAction("&Port…", self.choose_port)
        menu.addAction("&Listen on…", self.choose_host)
        menu.addSeparator()
        menu.addAction(self.dock.toggleViewAction())
        view_menu.addAction(self.dock.toggleViewAction())

    def _toggle_text(self) -> str:
        return f"&Serve on {'localhost' if self.host == '127.0.0.1' else self.host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    # -- start / stop -------------------------------------------------------------------------
    def set_serving(self, on: bool) -> None:
        if on and not self.serving:
            problem = self.start()
            if problem:
                QMessageBox.warning(self.parent(), "Could not serve", problem)
        elif not on:
            self.stop()
        self._show_state()

    def start(self) -> str | None:
        """Serve the loaded model on host:port; why not, when it cannot."""
        if self.worker.model is None:
            return "Load a model first: the server serves the model the window has loaded."
        import uvicorn

        from app.serve.api import create_app

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            return f"Could not listen on {self.host}:{self.port}: {e.strerror or e}"
        app = _with_endpoints(create_app(_Labelled(self.worker), Limits()))
        # The window's garbage is collected here, in the GUI thread: the server's thread allocates a lot, and a
        # collection it triggered would destroy Qt objects (with timers) caught in cycles in the wrong thread.
        gc.collect()
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                     timeout_graceful_shutdown=GRACEFUL_S))
        self._socket = sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="glassbox-http",
                                        daemon=True)
        self._thread.start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1"
        self.dock.show()
        return None

    def stop(self) -> None:
        """Stop listening; requests still running are cancelled (their KV blocks freed) and their clients told."""
        if not self.serving:
            return
        self.worker.request_stop_served()
        self._server.should_exit = True
        self._thread.join(GRACEFUL_S + 5)
        self._socket.close()
        self._server = self._thread = self._socket = None
        self.url = ""
        self._show_state()

    def started(self) -> bool:
        """Whether the server accepts connections yet (it starts in its thread)."""
        return self._server is not None and self._server.started

    def _show_state(self) -> None:
        if hasattr(self, "toggle"):
            self.toggle.blockSignals(True)
            self.toggle.setChecked(self.serving)
            self.toggle.setText(self._toggle_text())
            self.toggle.blockSignals(False)
        remote = self.serving and not is_loopback(self.host)
        self.address.setText(f"Serving {self.url}" + (" — other machines can reach it" if remote else ""))
        self.address.setStyleSheet("color: white; background: #b03a2e; padding: 1px 6px;" if remote else "")
        self.address.setVisible(self.serving)

    def choose_port(self) -> None:
        port, ok = QInputDialog.getInt(self.parent(), "Server port", "Port to listen on:", self.port, 1, 65535)
        if ok and port != self.port:
            self.port = port
            self.q.setValue("server/port", port)
            self._restart()

    def choose_host(self) -> None:
        host, ok = QInputDialog.getText(self.parent(), "Listen on", "Address (127.0.0.1 keeps it to this machine):",
                                        text=self.host)
        host = host.strip()
        if not ok or not host or host == self.host:
            return
        if not is_loopback(host) and QMessageBox.warning(
                self.parent(), "Reachable from other machines",
                f"Listening on {host} lets other machines use the model (and this computer's time), with no API "
                f"key. Listen there anyway?", QMessageBox.Yes | QMessageBox.No, QMessageBox.No) != QMessageBox.Yes:
            return
        self.host = host
        self._restart()

    def _restart(self) -> None:
        if self.serving:
            self.stop()
            self.set_serving(True)
        self._show_state()

    def on_model_loaded(self, facts) -> None:
        self._restart()  # /v1/models names the model now loaded

    # -- served records in ---------------------------------------------------------------------
    def on_served(self, batch) -> None:
        steps: list[StepRecord] = []

        def hand_over():
            if steps:
                self.panel.add_steps(steps)
                self.hub.on_served_steps(steps)
                steps.clear()
        for item in batch:
            if isinstance(item, StepRecord):
                steps.append(item)
                continue
            hand_over()
            if isinstance(item, ServedStart):
                self._params[item.prompt.request_id] = item.params
                self.panel.start(item.prompt, item.endpoint, item.at)
            elif isinstance(item, RequestDone):
                self.panel.finish(item)
                if self.hub.watched == item.request_id:
                    self.hub.flush(item)  # its end: the last distribution, attention and lens refreshed
        hand_over()
        if len(self._params) > 2 * len(self.panel.request_ids()):
            kept = set(self.panel.request_ids())
            self._params = {rid: p for rid, p in self._params.items() if rid in kept}

    def watch(self, request_id: int) -> None:
        found = self.panel.request(request_id)
        if found is not None:
            self.hub.watch(*found, self._params.get(request_id))

    def select_step(self, record: StepRecord) -> None:
        if self.hub.watched != record.request_id:
            self.watch(record.request_id)
        self.hub.select(record)
