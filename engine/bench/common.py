"""What both benchmarks (speed.py, compare.py) measure the same way: peak memory and the prompt."""
from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def prompt_ids(tokenizer_encode, n: int) -> list[int]:
    text = ("The quick brown fox jumps over the lazy dog while the engine measures every token. " * 400)
    ids = tokenizer_encode(text)
    return ids[:n]
