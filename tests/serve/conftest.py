"""A real server for the `openai` client: a tiny random qwen2 model with a byte-level vocabulary (any text,
so JSON constraints work) and a Hermes-style template that takes tools, owned by an EngineLoop and served by
uvicorn on a free loopback port in a thread."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from app.serve.api import create_app
from app.serve.engine_loop import EngineLoop
from app.serve.openai_request import Limits

LIMITS = Limits(max_body_bytes=64 << 10, max_tokens=1024, max_n=4)


class ServerThread:
    """uvicorn.Server on a socket bound here (so the port is known before it starts), in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.engine.test_tool_calling import write_byte_tokenizer
    from tests.tiny_models import build_hf_model

    path = tmp_path_factory.mktemp("serve-model")
    build_hf_model("qwen2", seed=3, vocab_size=258, max_position_embeddings=2048).save_pretrained(path)
    write_byte_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def engine_loop(tiny_model_dir):
    loop = EngineLoop.load(str(tiny_model_dir))
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def server(engine_loop):
    running = ServerThread(create_app(engine_loop, LIMITS))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def blocks_in_use(loop: EngineLoop) -> int:
    return loop.run(lambda engine: engine.kv_blocks_in_use).result()


def wait_idle(loop: EngineLoop, timeout: float = 30.0) -> int:
    """KV blocks still held once the engine has no work (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while loop.run(lambda engine: engine.has_work()).result() and time.monotonic() < deadline:
        time.sleep(0.02)
    return blocks_in_use(loop)
