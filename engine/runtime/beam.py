"""Beam search over the paged cache: keep the W best continuations by summed log-probability.

Each step scores every live beam's next tokens, keeps the 2W best candidates (as HF does, so a
finished beam cannot starve the live ones), forks the parents' block tables for the W survivors
(sharing their KV through copy-on-write) and releases the parents.
Shape legend: W beams, V vocab.
"""
from __future__ import annotations

import torch


def select_beams(runner, state, logits: torch.Tensor, out) -> None:
    """`logits` [W_live, V] for the request's live beams, in the order of state.sequences; uses the
    runner's public verbs only (engine/runtime/runner.py)."""
    width = state.request.beams
    params = state.request.params
    parents = list(state.sequences)
    if len(parents) > logits.shape[0]:  # right after prefill: every beam is the prompt, expand one
        for extra in parents[logits.shape[0]:]:
            runner.blocks.release(extra.table)
        parents = parents[:logits.shape[0]]
    logp = torch.log_softmax(logits.float().cpu(), dim=-1)  # [W, V]
    scores = logp + torch.tensor([p.score for p in parents]).unsqueeze(-1)  # [W, V]
    V = logp.shape[-1]
    top_scores, top_flat = torch.topk(scores.flatten(), min(2 * width, scores.numel()))
    children = []
    for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_flat.tolist())):
        parent, token = parents[flat // V], flat % V
        is_eos = token in runner.tokenizer.eos_ids and not params.ignore_eos
        if is_eos and rank >= width:
            continue  # as HF: an ending only counts if it ranks among the W best
        child = runner.new_sequence(len(children), runner.blocks.fork(parent.table), parent, score=score)
        runner.emit(state, child, token, logits[flat // V], out)
        if is_eos:
            child.finish_reason = "eos"
            state.finished.append(child)
            runner.blocks.release(child.table)
        else:
            children.append(child)
        if len(children) == width:
            break
    for parent in parents:
        runner.blocks.release(parent.table)
    state.sequences = children  # finished ones (length, context) are collected by the runner's retire()
