"""The OpenAI-compatible server (`glassbox serve`): an HTTP front (api.py) over a Backend that owns the engine's
thread (backend.py says what one must offer; engine_loop.py is the headless one). No Qt here: the CLI serves
without a window, and the window plugs its own engine thread in as a Backend."""
