"""Device and dtype choice (CUDA when present, else CPU), the CPU thread count (one per physical core
unless told) and, beside a GUI thread, the cycle collector's long-lived heap. The one place torch-wide
and process-wide settings change."""
from __future__ import annotations

import gc
import os

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no CUDA device is available")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on a GPU (tensor cores) and fp32 on the CPU (bf16 matmuls are slow on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


def physical_cores() -> int:
    """The physical cores this process may run on: hyper-threads share a core's vector units, so more
    matmul threads than cores only contend. Capped by the CPU affinity (a container's CPU set)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except Exception:  # no psutil, or a sandbox that hides /proc and /sys
        cores = None
    cores = cores or os.cpu_count() or 1
    try:
        return max(1, min(cores, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return cores


def thread_count(n: int | None) -> int:
    """What a `threads` setting means: n itself, or for 0 / None one thread per physical core."""
    return n if n and n > 0 else physical_cores()


def set_threads(n: int | None) -> int:
    """Intra-op threads for CPU matmuls: n, or one per physical core for 0 / None; returns the count.
    OpenMP keeps the count per OS thread, so call it on the thread that runs the engine (Engine.load
    does): the window's GUI thread keeps its own."""
    count = thread_count(n)
    torch.set_num_threads(count)
    return count


def freeze_heap() -> None:
    """Take every object alive now out of the cycle collector's full passes (gc.freeze). With torch, Qt
    and the app imported a full pass walks 200k+ objects and holds the GIL for 90-190 ms; the first one
    in a window's process falls in the first model load (its allocations trigger it), a GUI thread
    waiting all the while. Frozen, later passes walk only what was made since. Reference counting still
    frees frozen objects; only cyclic garbage already unreachable now is never collected (measured:
    a few hundred small objects per load)."""
    gc.freeze()


def give_back_memory() -> None:
    """Return freed heap memory to the operating system (glibc's malloc_trim). Freeing a large model (the
    float reference of the quantization drift, ~540 MB) leaves its pages in glibc's arenas, so the
    process's RSS did not drop on release; trimmed, it does. A no-op where there is no glibc."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
