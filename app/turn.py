"""What one chat turn asks of the worker and what the worker says about it, as plain frozen values
that cross threads: the request (Turn), the prompt the model continues (TurnStart) and the built-in
tool calls a reply made, already run (ToolCall). The worker (app/engine_worker.py) builds and answers
them; the chat controller (app/chat_controller.py) sends and reads them. Also the check that refuses
a turn whose prompt does not fit the model's context before any compute is spent on it."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from engine.records import PromptRecord, SamplingParams

TOOL_MODES = ("none", "offered", "auto", "required")
MODES = ("chat", "completion")  # completion: the text is continued as it is, no chat template
OVERFLOW = ("fail", "drop_oldest")  # a prompt longer than the context: refuse it, or drop the oldest turns


@dataclass(frozen=True)
class Turn:
    """A generate request: a reply to chat `messages`, or (no messages) a branch of the last reply that
    continues `prompt_ids + kept_ids`. `tools`: "none"; "offered" (the built-in tools are rendered into
    the prompt, the reply is free); "auto" (constrained to a call or prose); "required" (to a call)."""

    params: SamplingParams
    messages: tuple[dict, ...] = ()
    tools: str = "none"
    prompt_ids: tuple[int, ...] = ()
    kept_ids: tuple[int, ...] = ()  # the reply's tokens before the branch point, then the chosen token
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)
    mode: str = "chat"  # "completion": messages' contents are continued as plain text, no template
    template: str | None = None  # a chat template's source overriding the model's own (None: the model's)
    overflow: str = "fail"  # "drop_oldest": drop the oldest turns (never the system prompt) until it fits
    n: int = 1  # samples of this reply (GenerationRequest.n), best_of, beams (0 = off)
    best_of: int = 0
    beams: int = 0

    def __post_init__(self):
        if self.tools not in TOOL_MODES:
            raise ValueError(f"tools must be one of {TOOL_MODES}, not {self.tools!r}")
        if self.mode not in MODES or self.overflow not in OVERFLOW:
            raise ValueError(f"mode must be one of {MODES} and overflow one of {OVERFLOW}")


@dataclass(frozen=True)
class TurnStart:
    """Sent before a reply's first step: the whole prompt the model continues (ids and each token's text)
    and, for a branch, how many of its last tokens belong to the reply already and their text."""

    prompt: PromptRecord
    kept: int = 0
    kept_text: str = ""
    dropped: int = 0  # messages dropped from the start of the conversation so that it fits (overflow)
    interventions: tuple[str, ...] = ()  # labels of the interventions kept on that generate this reply

    @property
    def chat_prompt_ids(self) -> tuple[int, ...]:
        """The turn's prompt without the reply's kept tokens: what a later branch continues from."""
        return self.prompt.token_ids[:len(self.prompt.token_ids) - self.kept]


@dataclass(frozen=True)
class ToolCall:
    """A call of a built-in tool that a reply made, already run (`result` None: the user answers it)."""

    name: str
    arguments: dict
    call: dict  # the entry an assistant message's `tool_calls` list holds
    result: str | None

    def result_message(self, content: str) -> dict:
        return {"role": "tool", "name": self.name, "content": content}


def prompt_does_not_fit(prompt_tokens: int, context: int) -> str | None:
    """Why a prompt of `prompt_tokens` cannot be answered by a model holding `context` tokens (None: it can).
    The runner refuses such a prompt too; checking here first keeps an over-long message from ever
    becoming a turn (no PromptRecord, no status figures of a turn that never ran)."""
    if prompt_tokens < context:
        return None
    return (f"the message does not fit: the prompt would have {prompt_tokens} tokens and the model's context "
            f"holds {context} (the reply needs room too)")
