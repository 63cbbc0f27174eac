"""Regenerate resources/text/chat_transcripts.json: the default model's own greedy answers (fp32,
one thread, 96 new tokens) to twelve everyday chat prompts.

MoEfication fits its routers on these next to the shipped prose, so that the routers have seen
chat-formatted hidden states (system prompt, <|im_start|> turns, lists, code) and not only a novel.
The prompts are deliberately not the ones the tests and docs ask the MoEfied model, so the answers
those show are out of sample. Run: `.venv/bin/python scripts/make_chat_transcripts.py`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "resources" / "text" / "chat_transcripts.json"
PROMPTS = [
    "What is the largest planet in the solar system?", "Explain photosynthesis in simple terms.",
    "Write a short poem about the sea.", "How do I reverse a list in Python?",
    "What are the benefits of reading books?", "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?", "Give me a recipe for a simple salad.", "What is 12 times 7?",
    "Describe a cat in two sentences.", "Why is the sky blue?", "Suggest three names for a pet dog.",
]


def main() -> None:
    turns = []
    for prompt in PROMPTS:
        run = subprocess.run([sys.executable, "-m", "engine", "generate", "--chat", "--prompt", prompt,
                              "--max-new-tokens", "96", "--quant", "none", "--dtype", "float32",
                              "--threads", "1", "--json"], capture_output=True, text=True, cwd=ROOT, check=True)
        turns.append({"user": prompt, "assistant": json.loads(run.stdout)["text"]})
        print(prompt, "->", turns[-1]["assistant"][:80].replace("\n", " "), flush=True)
    OUT.write_text(json.dumps(turns, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
