"""The runner with drafters built on first use, the way the facade (engine/engine.py) builds them, so
the runtime tests can drive speculative requests on a bare Runner and look at its drafters' caches."""
from __future__ import annotations

from engine.runtime.drafters import build_drafter
from engine.runtime.runner import Runner


class DraftingRunner(Runner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drafters: dict = {}  # name -> drafter; a test may put its own in

    def submit(self, request, drafter=None, rejection=None) -> int:
        if request.speculative.enabled and drafter is None:
            name = request.speculative.drafter
            if name not in self.drafters:
                self.drafters[name] = build_drafter(name, self.model, self.tokenizer, self.blocks.block_size,
                                                    self.blocks.num_blocks)
            drafter = self.drafters[name]
        return super().submit(request, drafter, rejection)
