"""Export: a saved conversation with a code block and a tool call as Markdown (everything readable, the
code kept byte for byte), and as JSON in the format it was saved in (it opens again)."""
from __future__ import annotations

import json

import pytest

from app import conversation_io
from app.export import fenced, markdown, write_json, write_markdown

CODE = "```python\ndef add(a, b):\n    return a + b  # `add`\n```"
MESSAGES = [
    {"role": "user", "content": "Write add() in Python, then compute 2+2."},
    {"role": "assistant", "content": f"Here it is:\n\n{CODE}\n\nNow the sum."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
    {"role": "tool", "name": "calculator", "tool_call_id": "call_1", "content": "4"},
    {"role": "assistant", "content": "2+2 = **4**."},
]


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "c.json"
    conversation_io.save(path, "You are terse.\nAnswer in English.", MESSAGES, model="SmolLM2")
    data = json.loads(path.read_text())
    data["title"] = "Adding things"
    path.write_text(json.dumps(data))
    return path


def test_markdown_has_title_model_system_roles_code_and_tool_calls(saved, tmp_path):
    out = tmp_path / "c.md"
    write_markdown(saved, out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Adding things\n\n*Model: SmolLM2*")
    assert "### System prompt\n\n> You are terse.\n> Answer in English." in text
    assert CODE in text  # the reply's own code block, as written
    assert text.count("### User") == 1 and text.count("### Assistant") == 3
    assert '**Tool call:** `calculator`\n\n```json\n{\n  "expression": "2+2"\n}\n```' in text
    assert "### Tool result: `calculator`\n\n```\n4\n```" in text
    order = [text.index(s) for s in ("### User", "Here it is", "**Tool call:**", "### Tool result", "**4**")]
    assert order == sorted(order)


def test_a_fence_is_longer_than_any_backticks_inside():
    assert fenced("a ``` b").startswith("````\n") and fenced("a ``` b").endswith("\n````")
    assert fenced("plain", "json") == "```json\nplain\n```"


def test_markdown_of_the_window_s_conversation_without_title_or_system():
    text = markdown("", "", [{"role": "user", "content": "hi"}])
    assert text == "# Untitled conversation\n\n### User\n\nhi\n"


def test_json_export_is_the_saved_format_and_opens_again(saved, tmp_path):
    out = tmp_path / "copy.json"
    write_json(saved, out)
    assert json.loads(out.read_text()) == json.loads(saved.read_text())  # title (and branches) kept
    system, messages = conversation_io.load(out)
    assert system.startswith("You are terse") and messages[2]["tool_calls"][0]["function"]["name"] == "calculator"


def test_an_unreadable_file_is_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable conversation"):
        write_markdown(bad, tmp_path / "out.md")
    with pytest.raises(ValueError):
        write_json(bad, tmp_path / "out.json")
    assert not (tmp_path / "out.md").exists()
