"""The ~1B model of `python -m engine bench --compare --model 1b`: a llama with TinyLlama-1.1B's shapes and
random weights, written as a Q4_0 GGUF by the `gguf` package (no download) and cached, so the benchmark can
show the bandwidth-bound regime that users of bigger models live in. It writes the file; it runs nothing.

Block weights and the embedding are Q4_0 (as llama.cpp's own Q4_0 files), the untied LM head Q8_0, norms
are ones; the tokenizer is the default model's (49,152 tokens), copied from its GGUF so that llama.cpp
and Glassbox both read it. Random weights give near-tied logits, so greedy tokens are not a quality check.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

LLAMA_FTYPE_MOSTLY_Q4_0 = 2  # general.file_type, as llama.cpp names it


@dataclass(frozen=True, slots=True)
class Shapes:
    dim: int = 2048
    hidden_dim: int = 5632
    n_layers: int = 22
    n_heads: int = 32
    n_kv_heads: int = 4
    head_dim: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    context: int = 2048

    def file_name(self, seed: int) -> str:
        # every shape in the name: a cached file is reused only for the very recipe that wrote it
        return (f"random-llama-d{self.dim}-f{self.hidden_dim}-l{self.n_layers}-h{self.n_heads}-kv{self.n_kv_heads}"
                f"-hd{self.head_dim}-s{seed}.Q4_0.gguf")


TINYLLAMA_1B = Shapes()


def cache_dir() -> Path:
    """$GLASSBOX_CACHE/bench, else ~/.cache/glassbox/bench (the app keeps its built models beside it)."""
    return Path(os.environ.get("GLASSBOX_CACHE") or Path.home() / ".cache" / "glassbox") / "bench"


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def big_model_path(shapes: Shapes = TINYLLAMA_1B, folder: Path | None = None, seed: int = 0,
                   progress: Callable[[str], None] | None = _stderr) -> Path:
    """The cached file for these shapes, written first if it is not there yet. Only a complete file
    carries the final name (it is written under a temporary one and renamed), so a run killed
    mid-write leaves a leftover that is never read, and removed once its writer is gone."""
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / shapes.file_name(seed)
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(path)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    t0 = time.perf_counter()
    try:
        write_random_llama(partial, shapes, seed=seed, progress=progress)
        os.replace(partial, path)  # atomic: readers see no file or the whole file
    finally:
        partial.unlink(missing_ok=True)
    if progress is not None:
        progress(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    return path


def _remove_dead_leftovers(path: Path) -> None:
    import psutil

    for leftover in path.parent.glob(path.name + ".partial-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):  # a live writer's file is left alone
            leftover.unlink(missing_ok=True)


def _tokenizer_fields(source: Path):
    """(key, value, type, array item type) of every tokenizer.* field of a GGUF, typed as the GGUF spec
    types them (ids UINT32, token types INT32). engine's header walk reads them in ~1/3 of the time
    gguf.GGUFReader takes over the 49k-entry arrays."""
    from gguf import GGUFValueType as V

    from engine.loaders.gguf_file import read_metadata

    scalar = {bool: V.BOOL, int: V.UINT32, float: V.FLOAT32, str: V.STRING}  # bool first: it is an int too
    fields = []
    for key, value in read_metadata(source).items():
        if not key.startswith("tokenizer."):
            continue
        if isinstance(value, list):
            fields.append((key, value, V.ARRAY, V.INT32 if type(value[0]) is int else scalar[type(value[0])]))
        else:
            fields.append((key, value, scalar[type(value)], None))
    return fields


def write_random_llama(path: Path, shapes: Shapes, seed: int = 0, std: float = 0.02,
                       tokenizer_source: Path | None = None, progress: Callable[[str], None] | None = None) -> None:
    """A llama GGUF of random N(0, std) weights at `path`, one tensor in memory at a time."""
    import gguf
    from gguf import GGMLQuantizationType as T

    from engine.loaders import default_model_path

    t0 = time.perf_counter()
    tokenizer = _tokenizer_fields(Path(tokenizer_source or default_model_path()))
    vocab = len(next(value for key, value, *_ in tokenizer if key == "tokenizer.ggml.tokens"))
    s, q, kv = shapes, shapes.n_heads * shapes.head_dim, shapes.n_kv_heads * shapes.head_dim
    # name, numpy shape [rows, cols] (GGUF lists them reversed), type; None rows mark a norm (ones, F32)
    tensors = [("token_embd.weight", (vocab, s.dim), T.Q4_0), ("output_norm.weight", (s.dim,), T.F32),
               ("output.weight", (vocab, s.dim), T.Q8_0)]
    for i in range(s.n_layers):
        tensors += [(f"blk.{i}.attn_norm.weight", (s.dim,), T.F32), (f"blk.{i}.attn_q.weight", (q, s.dim), T.Q4_0),
                    (f"blk.{i}.attn_k.weight", (kv, s.dim), T.Q4_0), (f"blk.{i}.attn_v.weight", (kv, s.dim), T.Q4_0),
                    (f"blk.{i}.attn_output.weight", (s.dim, q), T.Q4_0),
                    (f"blk.{i}.ffn_norm.weight", (s.dim,), T.F32),
                    (f"blk.{i}.ffn_gate.weight", (s.hidden_dim, s.dim), T.Q4_0),
                    (f"blk.{i}.ffn_up.weight", (s.hidden_dim, s.dim), T.Q4_0),
                    (f"blk.{i}.ffn_down.weight", (s.dim, s.hidden_dim), T.Q4_0)]
    n_params = sum(int(np.prod(shape)) for _, shape, _ in tensors)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"random llama {n_params / 1e9:.2f}B (Glassbox benchmark)")
    writer.add_context_length(s.context)
    writer.add_embedding_length(s.dim)
    writer.add_block_count(s.n_layers)
    writer.add_feed_forward_length(s.hidden_dim)
    writer.add_head_count(s.n_heads)
    writer.add_head_count_kv(s.n_kv_heads)
    writer.add_key_length(s.head_dim)
    writer.add_value_length(s.head_dim)
    writer.add_rope_dimension_count(s.head_dim)
    writer.add_rope_freq_base(s.rope_theta)
    writer.add_layer_norm_rms_eps(s.norm_eps)
    writer.add_vocab_size(vocab)
    writer.add_file_type(LLAMA_FTYPE_MOSTLY_Q4_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value, vtype, item_type in tokenizer:
        writer.add_key_value(key, value, vtype, sub_type=item_type)
    for name, shape, kind in tensors:  # the header lists every tensor before any data is written
        block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
        writer.add_tensor_info(name, shape, np.float32, int(np.prod(shape)) // block * block_bytes, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    rng = np.random.default_rng(seed)
    done = 0
    for name, shape, kind in tensors:
        if kind == T.F32:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= std
            writer.write_tensor_data(gguf.quants.quantize(values, kind))
        done += int(np.prod(shape))
        if progress is not None and (name.endswith("ffn_down.weight") or name == "output.weight"):
            progress(f"random llama: {done / n_params:4.0%} of {n_params / 1e9:.2f}B values written, "
                     f"{time.perf_counter() - t0:.0f} s")
    writer.close()
