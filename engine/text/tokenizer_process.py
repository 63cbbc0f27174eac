"""The helper process behind engine/text/tokenizer_service.py: builds `tokenizers` pipelines (GGUF
vocabularies through engine/text/tokenizer_gguf.py, tokenizer.json files) and answers encode / decode /
lookup requests on them, one at a time, over a multiprocessing Connection. Requests are (op, args);
answers ("ok", value) or ("err", kind, payload). Imports nothing heavy (no torch)."""
from __future__ import annotations

import itertools
import json
import sys
from multiprocessing.connection import Connection

from engine.errors import ModelFormatError


def serve(conn) -> None:
    """Answer requests on `conn` until its other end closes."""
    import signal

    from tokenizers import Tokenizer as HFTokenizer

    from engine.text.tokenizer_gguf import gguf_backend as build_gguf

    tokenizers: dict[int, HFTokenizer] = {}
    handles = itertools.count(1)

    def built(tok: HFTokenizer):
        handle = next(handles)
        tokenizers[handle] = tok
        special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        return handle, tok.get_vocab_size(), special

    def table(tok, start, stop):
        ids = range(start, stop)
        return [tok.id_to_token(i) for i in ids], [tok.decode([i], skip_special_tokens=False) for i in ids]

    staged: dict[str, list] = {}

    def stage(key, chunk):
        staged.setdefault(key, []).extend(chunk)

    def gguf(meta, path):
        meta = {**meta, **staged}
        staged.clear()
        return built(build_gguf(meta, path))

    ops = {
        "stage": stage,
        "gguf": gguf,
        "file": lambda path: built(HFTokenizer.from_file(path)),
        "table": lambda h, start, stop: table(tokenizers[h], start, stop),
        "encode": lambda h, text, special: tokenizers[h].encode(text, add_special_tokens=special).ids,
        "decode": lambda h, ids, skip: tokenizers[h].decode(ids, skip_special_tokens=skip),
        "token_to_id": lambda h, token: tokenizers[h].token_to_id(token),
        "to_str": lambda h: tokenizers[h].to_str(),
        "decoder": lambda h: json.loads(tokenizers[h].to_str()).get("decoder"),
        "save": lambda h, path: tokenizers[h].save(path),
    }
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the app, which may go on
    conn.send(("ok", "ready"))
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the engine's process ended
            return
        if op == "release":  # no answer: sent ahead of a request
            for handle in args:
                tokenizers.pop(handle, None)
            continue
        try:
            answer = ("ok", ops[op](*args))
        except ModelFormatError as e:
            answer = ("err", "ModelFormatError", (e.path, e.problem))
        except BaseException as e:  # tokenizers raises plain Exception, and panics as BaseException
            answer = ("err", type(e).__name__, str(e))
        conn.send(answer)


if __name__ == "__main__":  # started by tokenizer_service._spawn with its socket's descriptor
    serve(Connection(int(sys.argv[1])))
