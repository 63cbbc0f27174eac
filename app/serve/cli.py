"""`glassbox serve`: load a model, own it on an engine thread (engine_loop.py) and serve the OpenAI API with
uvicorn. Headless: no Qt is imported. Loopback only unless --allow-remote says otherwise, because anyone who
can reach the port can use the model (and the machine's time)."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from app.serve.openai_request import Limits
from engine.records.adapters import adapter_spec

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only (names are resolved)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_host(host: str, allow_remote: bool, with_key: bool = False) -> str | None:
    """None when `host` may be bound; otherwise why not. A remote bind that is allowed still warns (on stderr)."""
    if is_loopback(host):
        return None
    if not allow_remote:
        return (f"refusing to listen on {host}: other machines could reach the model there. Use the default "
                f"127.0.0.1, or add --allow-remote (and --api-key) if you mean it")
    print(f"warning: listening on {host}: other machines can reach this server"
          + ("" if with_key else ", and no --api-key is set"), file=sys.stderr)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glassbox serve", description="Serve a model with the OpenAI API")
    p.add_argument("model", nargs="?", help="GGUF file or HF model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as the positional model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens,
                   help=f"most tokens a request may generate (default {Limits.max_tokens})")
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes,
                   help=f"largest request body (default {Limits.max_body_bytes})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the engine (default 0: one per core)")
    p.add_argument("--lora", metavar="DIR[:SCALE]", action="append", default=[], type=adapter_spec,
                   help="a PEFT LoRA adapter folder to serve with, scaled (default 1); repeatable")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_host(args.host, args.allow_remote, args.api_key is not None)
    if problem:
        parser.error(problem)
    if not 0 <= args.port <= 65535 or args.max_tokens < 1 or args.max_body_bytes < 1:
        parser.error("--port must be in [0, 65535]; --max-tokens and --max-body-bytes must be >= 1")
    import uvicorn

    from app.serve.api import create_app
    from app.serve.engine_loop import EngineLoop
    from engine.records import LoadOptions

    loop = EngineLoop.load(args.model_option or args.model, LoadOptions(threads=args.threads,
                                                                        adapters=tuple(args.lora)))
    app = create_app(loop, Limits(args.max_body_bytes, args.max_tokens), args.api_key)
    print(f"glassbox: serving {loop.model.id} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        loop.close()
    return 0
