"""The window serves its loaded model: a request sent by a real client (openai, streamed) shows in the
Requests list, and its tokens are selectable into the panels (the probabilities panel's distribution is
that token's); a chat turn while a served request streams still works, both stepped by the one engine
loop; stopping the server cancels what it was answering and frees every KV block."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from engine.records import StepRecord
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_idle(window) -> tuple[bool, int]:
    """(has work, KV blocks in use), read on the worker's thread."""
    return window.worker.run(lambda engine: (engine.has_work(), engine.kv_blocks_in_use)).result(10)


def stream_in_thread(url: str, body: dict, events: list) -> threading.Thread:
    def read():
        request = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            for line in answer:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_served_requests_show_in_the_panels_and_share_the_engine_with_the_chat(qtbot, settings,  # noqa: F811
                                                                             hf_checkpoint):
    from openai import OpenAI

    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    serving, panel = window.serving, window.serving.panel
    try:
        serving.port = free_port()
        serving.toggle.setChecked(True)  # Server → Serve on localhost:PORT
        qtbot.waitUntil(serving.started, timeout=10_000)
        assert serving.address.text() == f"Serving http://127.0.0.1:{serving.port}/v1" and not serving.dock.isHidden()

        # A streamed request from the openai client: listed, then its tokens clicked into the panels.
        client = OpenAI(base_url=serving.url, api_key="unused", max_retries=0, timeout=60)
        chunks = list(client.completions.create(model=window.worker.model.id, prompt="t1 t2 t3", max_tokens=6,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        qtbot.waitUntil(lambda: len(panel.request_ids()) == 1 and panel.status(panel.request_ids()[0]) == "done",
                        timeout=10_000)
        (rid,) = panel.request_ids()
        prompt, steps = panel.request(rid)
        assert len(steps) == 6 and "".join(s.text for s in steps) == text
        assert all(s.logit_ids for s in steps)  # stored logits: the probabilities panel can re-derive its stages
        panel.select_request(rid)
        assert window.hub.watched == rid and window.hub.inspector.request_id == rid
        with qtbot.waitSignal(window.worker.distribution, timeout=10_000,
                              check_params_cb=lambda view: view.step_index == 2) as shown:
            panel.click_step(2)
        view = shown.args[0]
        assert view.chosen_token_id == steps[2].token_id and len(view.token_ids) > 1
        qtbot.waitUntil(lambda: window.probabilities.title.text().startswith("Step 2:"), timeout=10_000)
        assert window.hub.contexts.before(steps[2])[0] == prompt.token_ids + tuple(s.token_id for s in steps[:2])
        assert window.controller.steps == []  # the chat got none of it

        # A chat turn while a long served request streams: both advance in the same engine steps.
        engine = window.worker._engine  # a test's look while the worker is idle
        owners: list[set[int]] = []
        real_step = engine.step

        def step():  # notes whose records each step returned
            # A tiny model's step takes ~1 ms: without a pause its 200 tokens could all be out before the chat
            # turn is typed on a loaded machine; at 30 ms a step they take 6 s, and the server is stopped sooner.
            time.sleep(0.03)
            records = real_step()
            owners.append({r.request_id for r in records})
            return records
        engine.step = step
        events: list[bytes] = []
        reader = stream_in_thread(serving.url, {"model": window.worker.model.id, "prompt": "t5 t6", "stream": True,
                                                "max_tokens": 200, "ignore_eos": True, "temperature": 0}, events)
        qtbot.waitUntil(lambda: len(panel.request_ids()) == 2 and len(panel.request(panel.request_ids()[0])[1]) >= 2,
                        timeout=10_000)
        served = panel.request_ids()[0]
        chat(qtbot, window, "t1 t2", max_new_tokens=6)
        reply = window.controller.steps
        assert reply and {s.request_id for s in reply} == {reply[0].request_id} != {served}
        assert any({reply[0].request_id, served} <= seen for seen in owners)  # stepped together
        assert window.chat.transcript_text().strip()

        # Stopping the server cancels the served request and frees every block.
        serving.toggle.setChecked(False)
        reader.join(15)
        assert not reader.is_alive() and events[-1] == b"[DONE]"
        assert len(events) < 200  # cut short: not every one of its 200 tokens came
        qtbot.waitUntil(lambda: engine_idle(window) == (False, 0), timeout=10_000)
        qtbot.waitUntil(lambda: panel.status(served) == "cancelled", timeout=10_000)
        assert not serving.serving and not serving.address.isVisible() and not serving.toggle.isChecked()
        with socket.socket() as s:  # nothing listens on the port any more (closed connections may linger)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", serving.port))
        del engine.step
    finally:
        close_window(window)


def test_served_steps_are_not_the_chats(qtbot, settings, hf_checkpoint):  # noqa: F811
    """A served request's steps reach the Requests list and the watched panels only; a chat token clicked
    afterwards brings the panels back to the chat."""
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=4)
        chat_steps = list(window.controller.steps)
        serving = window.serving
        serving.port = 0  # any free port
        assert serving.start() is None
        qtbot.waitUntil(serving.started, timeout=10_000)
        body = json.dumps({"model": window.worker.model.id, "prompt": "t4", "max_tokens": 3,
                           "ignore_eos": True}).encode()
        urllib.request.urlopen(urllib.request.Request(serving.url + "/completions", body,
                                                      {"Content-Type": "application/json"}), timeout=60).read()
        panel = serving.panel
        qtbot.waitUntil(lambda: bool(panel.request_ids()) and panel.status(panel.request_ids()[0]) == "done",
                        timeout=10_000)
        panel.select_request(panel.request_ids()[0])
        panel.click_step(0)
        assert window.hub.watched is not None
        assert window.controller.steps == chat_steps
        window.chat.step_clicked.emit(1)  # a chat token: the panels show the chat again
        assert window.hub.watched is None and window.hub.inspector.request_id == chat_steps[0].request_id
        assert isinstance(window.hub.selected, StepRecord) and window.hub.selected.request_id == chat_steps[0].request_id
        serving.stop()
        qtbot.waitUntil(lambda: engine_idle(window) == (False, 0), timeout=10_000)
    finally:
        close_window(window)
