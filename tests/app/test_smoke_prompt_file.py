"""`glassbox --smoke --prompt-file FILE --max-new-tokens N`: the real window, offscreen, on FILE's text,
with decode speed and memory in its summary line; the same prompt through `python -m engine generate
--prompt-file --ignore-eos` gives the same tokens, so the two can be compared side by side. The plain
`--smoke` line (the installers' self-test, read by tests/packaging) keeps its fields."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from engine.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def smoke(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}  # --smoke sets it itself
    env["HOME"] = str(home)  # its settings and autosave stay out of the developer's
    result = subprocess.run([sys.executable, "-m", "app", "--smoke", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    (summary,) = [line for line in result.stdout.splitlines() if line.startswith("glassbox smoke ")]
    return summary


def field(summary: str, name: str, pattern: str = r"[\d.]+") -> str:
    return re.search(rf" {name}=({pattern}) ", summary).group(1)


def test_smoke_with_a_prompt_file_measures_the_window_and_matches_the_engine(tmp_path, hf_checkpoint, capsys):
    directory, _ = hf_checkpoint("llama")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("t3 t1 t4 t1 t5 t9 t2 t6", encoding="utf-8")
    summary = smoke(tmp_path, "--prompt-file", str(prompt), "--max-new-tokens", "6", str(directory))
    assert summary.startswith("glassbox smoke ok ") and " tokens=6 " in summary
    assert re.search(r" path=(.+)$", summary).group(1) == str(directory)  # still the line's last field
    ids = [int(t) for t in field(summary, "ids", r"[\d,]+").split(",")]
    prompt_tokens = int(field(summary, "prompt_tokens"))
    decode, rss_start, rss_end = (float(field(summary, name))
                                  for name in ("decode_tok_s", "rss_start_mb", "rss_end_mb"))
    assert decode >= 0 and rss_start > 0 and rss_end > 0 and prompt_tokens > 8

    # The engine alone on the same prompt file and token count: the same greedy tokens from the same prompt.
    assert cli_main(["generate", "--model", str(directory), "--device", "cpu", "--threads", "1", "--chat",
                     "--prompt-file", str(prompt), "--ignore-eos", "--max-new-tokens", "6", "--json"]) == 0
    engine = json.loads(capsys.readouterr().out)
    assert engine["token_ids"] == ids and engine["prompt_tokens"] == prompt_tokens
    assert engine["decode_tokens_per_s"] >= 0


def test_plain_smoke_line_keeps_its_fields(tmp_path, hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    summary = smoke(tmp_path, str(directory))
    assert summary.startswith("glassbox smoke ok ") and " tokens=8 " in summary
    names = re.findall(r" (\w+)=", re.sub(r" text=('.*?'|\".*?\")", "", summary))
    assert names == ["model", "tokens", "ids", "window_s", "loaded_s", "first_token_s", "total_s", "path"]
