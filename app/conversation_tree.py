"""The conversation as a tree of messages, as ChatGPT and LM Studio keep it: an edit, a regenerated reply or
"continue from here with this token" adds a sibling instead of replacing, and each node remembers which child
the conversation goes on with, so the active path is the conversation the model sees. A reply keeps what a
branch of it needs: the prompt ids it continued and its tokens (step records are the controller's, by index).
Plain data and JSON; no Qt, no engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ROOT = 0  # a node without a message: the conversation's first messages are its children


@dataclass(eq=False)
class Node:
    id: int
    parent: int | None
    message: dict | None  # OpenAI-shaped; None for the root
    children: list[int] = field(default_factory=list)
    active: int = -1  # the child the active path goes on with (-1: it ends here)
    # A generated reply: the prompt it continued (TurnStart.chat_prompt_ids) and its tokens as
    # (token id, text, probability); its first `kept` tokens were another reply's (a branch, the last chosen).
    prompt_ids: tuple[int, ...] = ()
    tokens: list[tuple[int, str, float]] = field(default_factory=list)
    kept: int = 0
    records: list[int] = field(default_factory=list)  # per token: its StepRecord's index in the controller's list, -1 none
    note: str = ""  # how the reply ended ("stopped", "length limit", "interrupted")
    label: str = ""  # how the chat draws it when not as its content (a built-in tool's answer)

    @property
    def role(self) -> str:
        return self.message["role"] if self.message else ""


@dataclass(frozen=True)
class Removed:
    """A deleted message and every message after it, with where it was: enough to put it back."""

    parent: int
    position: int
    nodes: tuple[Node, ...]
    was_active: bool


class ConversationTree:
    def __init__(self):
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, None, None)}
        self._next = 1

    # -- reading ------------------------------------------------------------------------------
    def path(self) -> list[Node]:
        """The active path: the conversation as the chat shows it and the model is sent it."""
        out, node = [], self.nodes[ROOT]
        while node.active >= 0:
            node = self.nodes[node.active]
            out.append(node)
        return out

    def messages(self) -> list[dict]:
        return [dict(n.message) for n in self.path()]

    def leaf(self) -> Node:
        path = self.path()
        return path[-1] if path else self.nodes[ROOT]

    def siblings(self, node_id: int) -> list[int]:
        return self.nodes[self.nodes[node_id].parent].children

    def position(self, node_id: int) -> tuple[int, int]:
        """(1-based place among its siblings, how many): the navigator's ‹ i/n ›."""
        siblings = self.siblings(node_id)
        return siblings.index(node_id) + 1, len(siblings)

    def subtree(self, node_id: int) -> list[Node]:
        out, todo = [], [node_id]
        while todo:
            node = self.nodes[todo.pop()]
            out.append(node)
            todo.extend(node.children)
        return out

    # -- changing -----------------------------------------------------------------------------
    def add(self, parent: int, message: dict, **fields) -> Node:
        """A new child of `parent`, made the active one."""
        node = Node(self._next, parent, message, **fields)
        self._next += 1
        self.nodes[node.id] = node
        self.nodes[parent].children.append(node.id)
        self.nodes[parent].active = node.id
        return node

    def append(self, message: dict, **fields) -> Node:
        return self.add(self.leaf().id, message, **fields)

    def activate(self, node_id: int) -> None:
        """Make the path go through `node_id` (its own active descendants follow it)."""
        node = self.nodes[node_id]
        while node.parent is not None:
            self.nodes[node.parent].active = node.id
            node = self.nodes[node.parent]

    def switch(self, node_id: int, step: int) -> Node:
        """The sibling `step` places from `node_id` (clamped), made active: the navigator's ‹ and ›."""
        siblings = self.siblings(node_id)
        i = max(0, min(len(siblings) - 1, siblings.index(node_id) + step))
        self.activate(siblings[i])
        return self.nodes[siblings[i]]

    def edit(self, node_id: int, content: str) -> Node:
        """An edited message is a new sibling: what followed the old one stays on the old branch."""
        node = self.nodes[node_id]
        return self.add(node.parent, {**node.message, "content": content})

    def remove(self, node_id: int) -> Removed:
        """Delete a message and its replies on every branch below it; the path goes on with a sibling if
        there is one. Returns what `restore` needs to undo it."""
        node = self.nodes[node_id]
        parent = self.nodes[node.parent]
        position = parent.children.index(node_id)
        was_active = parent.active == node_id
        parent.children.remove(node_id)
        gone = self.subtree(node_id)
        for n in gone:
            del self.nodes[n.id]
        if was_active:
            parent.active = parent.children[min(position, len(parent.children) - 1)] if parent.children else -1
        return Removed(node.parent, position, tuple(gone), was_active)

    def restore(self, removed: Removed) -> None:
        for n in removed.nodes:
            self.nodes[n.id] = n
        parent = self.nodes[removed.parent]
        parent.children.insert(removed.position, removed.nodes[0].id)
        if removed.was_active:
            parent.active = removed.nodes[0].id

    # -- files --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Every node but the root, parents before children (ids are kept: a restore keeps the navigators)."""
        out, todo = [], list(reversed(self.nodes[ROOT].children))
        while todo:
            node = self.nodes[todo.pop()]
            item = {"id": node.id, "parent": node.parent, "message": node.message, "active": node.active}
            if node.tokens:
                item.update(prompt_ids=list(node.prompt_ids), kept=node.kept,
                            tokens=[[t, text, round(p, 4)] for t, text, p in node.tokens])
            for key in ("note", "label"):
                if getattr(node, key):
                    item[key] = getattr(node, key)
            out.append(item)
            todo.extend(reversed(node.children))
        return {"root_active": self.nodes[ROOT].active, "nodes": out}

    @classmethod
    def from_json(cls, data, check_message=lambda m: m) -> ConversationTree:
        """Raises ValueError for anything but what to_json writes (messages go through `check_message`)."""
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise ValueError("the tree must be an object with a list of nodes")
        tree = cls()
        actives = {ROOT: data.get("root_active", -1)}
        for i, item in enumerate(data["nodes"]):
            if not isinstance(item, dict):
                raise ValueError(f"tree node {i + 1} is not an object")
            node_id, parent = item.get("id"), item.get("parent", ROOT)
            if not isinstance(node_id, int) or node_id <= ROOT or node_id in tree.nodes:
                raise ValueError(f"tree node {i + 1} has no new positive id")
            if parent not in tree.nodes:
                raise ValueError(f"tree node {i + 1}'s parent comes after it or does not exist")
            try:
                message = check_message(item.get("message"))
                tokens = [(int(t), str(text), float(p)) for t, text, p in item.get("tokens", [])]
                prompt_ids = tuple(int(t) for t in item.get("prompt_ids", []))
            except (TypeError, ValueError) as e:
                raise ValueError(f"tree node {i + 1}: {e}") from None
            kept, note, label = item.get("kept", 0), item.get("note", ""), item.get("label", "")
            if not isinstance(kept, int) or not isinstance(note, str) or not isinstance(label, str):
                raise ValueError(f"tree node {i + 1} has a bad kept count, note or label")
            node = Node(node_id, parent, message, prompt_ids=prompt_ids, tokens=tokens, kept=kept,
                        records=[-1] * len(tokens), note=note, label=label)
            tree.nodes[node_id] = node
            tree.nodes[parent].children.append(node_id)
            actives[node_id] = item.get("active", -1)
            tree._next = max(tree._next, node_id + 1)
        for node_id, active in actives.items():  # a stale or missing choice: the newest child
            node = tree.nodes[node_id]
            node.active = active if active in node.children else (node.children[-1] if node.children else -1)
        return tree

    @classmethod
    def from_messages(cls, messages: list[dict]) -> ConversationTree:
        """A linear conversation (a version-1 file): one branch."""
        tree = cls()
        for m in messages:
            tree.append(m)
        return tree
