"""The chat templates Glassbox offers besides a model's own, written from each format's documentation:
ChatML, Llama 3, Gemma, and "none" (the messages' text, no roles). They are jinja sources like any
model's template and are rendered by engine/text/chat_template.py in the same sandbox; none of them
renders tools (a model's own template does that).

`bos_token` is the loaded model's own, so Llama 3 and Gemma begin with whatever BOS the model has.
"""
from __future__ import annotations

# <|im_start|>role\ncontent<|im_end|>\n per message; no BOS. Also the fallback for models without a template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta's documented format: BOS, then per message a role header, a blank line, the trimmed text, <|eot_id|>.
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] or '') | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Google's documented format: <start_of_turn>user|model\n text <end_of_turn>\n. Gemma has no system role:
# as Gemma 3's own template does, the system text opens the first turn, followed by a blank line.
GEMMA = (
    "{{ bos_token }}"
    "{% set system = (messages[0]['content'] or '') | trim if messages and messages[0]['role'] == 'system'"
    " else none %}"
    "{% set turns = messages[1:] if system is not none else messages %}"
    "{% if system is not none and not turns %}{{ '<start_of_turn>user\\n' + system + '<end_of_turn>\\n' }}{% endif %}"
    "{% for message in turns %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if loop.first and system is not none %}{{ system + '\\n\\n' }}{% endif %}"
    "{{ (message['content'] or '') | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# For base models: the text of every message but the system prompt, run together with nothing added. It is
# the text plain-completion mode continues (which adds the BOS a model expects; this template adds none).
NONE = "{% for message in messages if message['role'] != 'system' %}{{ message['content'] or '' }}{% endfor %}"

# name shown to the user -> source
BUILTIN_TEMPLATES = {"ChatML": CHATML, "Llama 3": LLAMA3, "Gemma": GEMMA, "none": NONE}

NO_TEMPLATE_NOTE = "{#- This model ships no chat template: Glassbox renders its chats with ChatML, below. -#}\n"
# Gemma checkpoints (a GGUF may carry no template) would answer ChatML's unknown markers with noise: they get
# the Gemma format instead, which folds a system message into the first user turn.
GEMMA_FAMILY = ("gemma", "gemma2", "gemma3")
NO_TEMPLATE_NOTE_GEMMA = ("{#- This model ships no chat template: Glassbox renders its chats with the Gemma "
                          "format, below. -#}\n")


def fallback_template(arch: str) -> str:
    """The template used for a model of architecture `arch` that ships none."""
    return GEMMA if arch in GEMMA_FAMILY else CHATML


def fallback_template_with_note(arch: str) -> str:
    """fallback_template, opened by a note saying the model ships no template (what the template panel shows)."""
    return NO_TEMPLATE_NOTE_GEMMA + GEMMA if arch in GEMMA_FAMILY else NO_TEMPLATE_NOTE + CHATML


def completion_text(messages) -> str:
    """What plain-completion mode continues: the same text the "none" template renders."""
    return "".join(str(m.get("content") or "") for m in messages if m.get("role") != "system")
