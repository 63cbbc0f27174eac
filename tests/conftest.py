"""Shared fixtures: tiny seeded HF checkpoints (transformers is the test-only reference) and the
default model's location. Qt tests set QT_QPA_PLATFORM=offscreen here, before any Qt import."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread keeps tiny-model tests fast and stable on a 2-core CI box running other work.
torch.set_num_threads(1)

from tests.tiny_models import build_hf_model, write_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_qt_settings(tmp_path_factory):
    """Window settings (saved dock layouts, recent models) go to a folder of this run, never the user's
    ~/.config: a layout saved by one test was restored by the next, and by the next run."""
    from PySide6.QtCore import QSettings

    folder = str(tmp_path_factory.mktemp("qsettings"))
    for form in (QSettings.NativeFormat, QSettings.IniFormat):
        QSettings.setPath(form, QSettings.UserScope, folder)


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: (arch, **config overrides) -> (directory, transformers model) saved as safetensors."""

    def make(arch: str, seed: int = 0, **overrides):
        model = build_hf_model(arch, seed, **overrides)
        out = tmp_path / f"{arch}-{seed}"
        model.save_pretrained(out)
        write_tiny_tokenizer(out, model.config.vocab_size)
        return out, model

    return make


@pytest.fixture(scope="session")
def default_gguf():
    from engine.loaders import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def hf_default_model(default_gguf):
    """transformers' own reading of the default GGUF (it dequantizes to fp32, as we do). Slow: shared."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_default_tokenizer(default_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
