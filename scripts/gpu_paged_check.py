"""On a CUDA GPU: the paged engine (prefix reuse, forks, batched decode) against a plain recompute.

Prints the largest logit difference seen; used on the lent GPU machine, not in CI.
"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.runtime.runner import Runner  # noqa: E402
from engine.kv_cache import ContiguousKVCache  # noqa: E402
from engine.loaders import load_checkpoint  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.records import GenerationRequest, InstrumentOptions, RequestDone, SamplingParams, StepRecord  # noqa: E402
from tests.tiny_models import build_hf_model, write_tiny_tokenizer  # noqa: E402


def main():
    worst = 0.0
    for arch in ("llama", "qwen3_moe", "mistral"):
        with tempfile.TemporaryDirectory() as d:
            hf = build_hf_model(arch)
            hf.save_pretrained(d)
            write_tiny_tokenizer(Path(d), hf.config.vocab_size)
            ckpt = load_checkpoint(d)
        model = Decoder.from_tensors(ckpt.config, ckpt.tensors, device="cuda")
        engine = Runner(model, ckpt.tokenizer, num_blocks=64, block_size=8)
        prompt = tuple(range(3, 22))
        specs = [GenerationRequest(prompt, SamplingParams(temperature=1.2, seed=5, max_new_tokens=20, ignore_eos=True),
                                   n=3, instrument=InstrumentOptions(stored_logits=-1)),
                 GenerationRequest(prompt + (40, 41), SamplingParams(temperature=0, max_new_tokens=10),
                                   instrument=InstrumentOptions(stored_logits=-1))]
        ids = [engine.submit(s) for s in specs]
        steps, prompts = {}, dict(zip(ids, (list(prompt), list(prompt) + [40, 41])))
        while engine.has_work():
            for item in engine.step():
                if isinstance(item, StepRecord):
                    steps.setdefault((item.request_id, item.seq_index), []).append(item)
                elif isinstance(item, RequestDone):
                    assert item.error is None, item.error
        for (rid, _), records in steps.items():
            tokens = list(prompts[rid])
            for rec in records:
                logits = torch.empty(len(rec.logit_ids))
                logits[list(rec.logit_ids)] = torch.tensor(rec.logit_values)
                cache = ContiguousKVCache(model.config, len(tokens), device="cuda")
                ref = model(torch.tensor([tokens], device="cuda"), cache.view(0, len(tokens)))[0, -1].cpu()
                worst = max(worst, (logits - ref).abs().max().item())
                tokens.append(rec.token_id)
        stats = engine.blocks.stats()
        assert stats.used == 0, stats
        print(f"{arch}: {len(steps)} sequences checked, blocks all free")
    print(f"largest |paged - recompute| logit difference on {torch.cuda.get_device_name(0)}: {worst:.2e}")
    assert worst <= 1e-4


if __name__ == "__main__":
    main()
