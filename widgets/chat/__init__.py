"""The chat panel (widgets/chat/panel.py) and its parts: Markdown per line (markdown.py), the transcript's
HTML (transcript.py) and the side-by-side view of a reply's branches (samples.py)."""
from widgets.chat.markdown import code_blocks, plain_text
from widgets.chat.panel import ChatPanel, message_view
from widgets.chat.transcript import (MessageView, call_text, prob_colour, spec_figures_text, spec_marks)

__all__ = ["ChatPanel", "MessageView", "call_text", "code_blocks", "message_view", "plain_text", "prob_colour",
           "spec_figures_text", "spec_marks"]
