"""The CPU thread count (engine/device.py): one per physical core unless told, applied by Engine.load on
the thread that runs the engine; and the collector's heap frozen when a GUI thread shares the GIL."""
import gc
import os

import pytest
import torch

from engine.cli import build_parser
from engine.device import physical_cores, set_threads, thread_count
from engine.engine import Engine
from engine.records import LoadOptions
from tests.threads import on_a_thread


def test_physical_cores_is_a_count_of_this_machine():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_physical_cores_falls_back_to_the_cpu_count(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)  # what psutil says where it cannot tell
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert physical_cores() == min(os.cpu_count(), allowed)


def test_zero_means_one_thread_per_physical_core():
    assert thread_count(0) == thread_count(None) == physical_cores()
    assert thread_count(3) == 3
    with pytest.raises(ValueError, match="threads must be >= 0"):
        LoadOptions(threads=-1)


def test_set_threads_changes_only_the_calling_thread():
    before = torch.get_num_threads()
    assert on_a_thread(lambda: (set_threads(1), torch.get_num_threads())) == (1, 1)
    assert on_a_thread(lambda: (set_threads(0), torch.get_num_threads())[1]) == physical_cores()
    assert torch.get_num_threads() == before  # OpenMP keeps a count per thread: this one kept its own


def test_engine_load_applies_its_thread_count_where_the_engine_runs(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    before, frozen = torch.get_num_threads(), gc.get_freeze_count()
    try:
        def load(threads: int) -> int:
            Engine.load(directory, LoadOptions(device="cpu", threads=threads))
            return torch.get_num_threads()

        assert on_a_thread(lambda: load(1)) == 1
        assert on_a_thread(lambda: load(0)) == physical_cores()  # the window's and the CLI's default
        # LoadOptions() leaves a script's own setting alone (benchmarks set torch's count themselves).
        assert on_a_thread(lambda: (torch.set_num_threads(1), load(None))[1]) == 1
        # Off the main thread (a GUI may be waiting for the GIL) the heap is frozen: full collections stay short.
        assert gc.get_freeze_count() > frozen
        assert torch.get_num_threads() == before
    finally:
        gc.unfreeze()  # give this test session's objects back to the collector


def test_the_cli_defaults_to_one_thread_per_physical_core():
    args = build_parser().parse_args(["generate", "--prompt", "hi"])
    assert args.threads == 0 and not args.ignore_eos
    args = build_parser().parse_args(["generate", "--prompt-file", "p.txt", "--ignore-eos", "--threads", "3"])
    assert (args.prompt, args.prompt_file, args.ignore_eos, args.threads) == (None, "p.txt", True, 3)
