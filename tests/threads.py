"""Running test code off the main thread, as the window's worker runs the engine."""
from __future__ import annotations

import threading


def on_a_thread(fn):
    """fn() on a new thread: its result, or its exception re-raised on the caller's thread."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised on the test's thread
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
