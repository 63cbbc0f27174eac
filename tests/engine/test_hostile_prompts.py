"""Prompts from the keyboard or a shell (issue 10): empty, longer than the context, invalid UTF-8 / lone
surrogates, control characters, one very long line. Each ends in a clear error or a correct reply, in
the engine and in the CLI (`python -m engine generate|chat`), and the engine stays usable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main as cli_main
from engine.engine import Engine
from engine.errors import ContextOverflow
from engine.records import SamplingParams

CONTEXT = 64
GREEDY = SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True)
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.tiny_models import build_hf_model, write_tiny_tokenizer

    model = build_hf_model("llama", 0, max_position_embeddings=CONTEXT)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    write_tiny_tokenizer(out, model.config.vocab_size)
    return out


def run(engine, prompt_ids):
    return [item for item in engine.generate(prompt_ids, GREEDY)][-1]


ODD = {
    "lone surrogates (undecodable bytes)": "t1 \udcff\udc80 t2 \ud800",
    "control characters": "t1 \x00\x01\x07\x1b[31m\x7f t2\r\n\t\x0c",
    "one very long line": "t3" * 200_000,  # one 400k-character word
    "bidi and zero-width": "t1 \u202e\u200b\ufeff t2",
}


@pytest.mark.parametrize("text", ODD.values(), ids=ODD.keys())
def test_odd_text_is_encoded_and_answered(tiny_dir, text):
    engine = Engine.load(tiny_dir)
    ids = engine.prompt_ids(text)
    assert ids and max(ids) < engine.config.vocab_size
    assert len(run(engine, ids).token_ids) == 3
    chat = engine.chat_prompt_ids([{"role": "user", "content": text}])
    assert len(run(engine, chat).token_ids) == 3


def test_empty_and_overlong_prompts_are_clear_errors_and_the_engine_goes_on(tiny_dir):
    engine = Engine.load(tiny_dir)
    with pytest.raises(ContextOverflow, match="empty"):
        run(engine, [])
    with pytest.raises(ContextOverflow, match=f"context holds {CONTEXT}"):
        run(engine, engine.prompt_ids("t1 " * 500))
    assert len(run(engine, engine.prompt_ids("t1 t2")).token_ids) == 3
    assert engine.kv_blocks_in_use == 0


def test_cli_generate(tiny_dir, capsys):
    base = ["generate", "--model", str(tiny_dir), "--max-new-tokens", "3", "--temperature", "0"]
    assert cli_main(base + ["--prompt", ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli_main(base + ["--prompt", "t1 " * 500]) == 2
    assert f"context holds {CONTEXT}" in capsys.readouterr().err
    for text in ODD.values():
        assert cli_main(base + ["--prompt", text]) == 0
        capsys.readouterr()
    assert cli_main(base + ["--chat", "--prompt", ODD["lone surrogates (undecodable bytes)"]]) == 0


def test_cli_invalid_utf8_from_a_real_shell(tiny_dir):
    """Bytes that are not UTF-8, in argv and on stdin, from a real process (Python decodes argv with
    surrogateescape; stdin is read strictly unless told otherwise)."""
    args = [sys.executable, "-m", "engine", "generate", "--model", str(tiny_dir), "--max-new-tokens", "3",
            "--temperature", "0", "--prompt", b"t1 \xff\xfe t2".decode("utf-8", "surrogateescape")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    chat = subprocess.run([sys.executable, "-m", "engine", "chat", "--model", str(tiny_dir), "--max-new-tokens", "3",
                           "--temperature", "0"], input=b"t1 \xff t2\n\x00\x07 t3\n\n", cwd=ROOT,
                          capture_output=True, timeout=120)
    err = chat.stderr.decode(errors="replace")
    assert chat.returncode in (0, 2) and "Traceback" not in err, err[-2000:]
    if chat.returncode == 2:  # a strict stdin (some locales) refuses: then it must say why
        assert "error:" in err and "utf-8" in err.lower()
    else:
        assert chat.stdout.count(b"model> ") == 2  # both lines answered
