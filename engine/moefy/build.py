"""MoEfication (Zhang et al. 2022): split every SwiGLU MLP of a dense model into E equal experts and
fit a router per layer, so the dense model becomes a sparse mixture-of-experts.

A SwiGLU MLP is a sum over its neurons, down[:, j] * silu(gate[j]·h) * (up[j]·h), so grouping the
neurons into disjoint sets splits it into smaller SwiGLUs whose outputs add up to the dense output.
- A share of the neurons (shared_fraction) that contribute most on average stays always on, as a
  shared expert: SwiGLU activations are dense, and without it even an oracle router at top-2 of 8
  loses most of the model (perplexity ~2300 vs ~30 on the shipped text; see docs/benchmarks.md).
- The first `dense_layers` layers keep their dense MLP (as DeepSeek-MoE does; Qwen2-MoE's
  `mlp_only_layers`): on the default model, splitting layer 0 alone costs +12% perplexity, four
  times any other layer.
- The rest is clustered by balanced k-means over what each neuron does on real text (its
  activation over the collected tokens: neurons that fire together share an expert), each of the
  E experts getting exactly the same number of neurons.
- The router of a layer predicts, from the MLP's input, the log of each expert's output norm on
  that token (ridge least squares over hidden states collected by running the dense model over the
  shipped text and on chat transcripts, so that chat-formatted hidden states are seen too); the
  top-k experts by that score run. A softmax of those scores is then each
  expert's predicted share of the routed output, which is what the routing panel shows as Pᵢ.

The routing convention that keeps top-k = E exact lives in engine/moefy/checkpoint.py (Qwen2-MoE
with a pre-scaled router); this file only produces the split and the router scores.

Shape legend: N tokens, D model dim, F dense hidden dim, E experts, I = F/E expert hidden dim.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.kv_cache import ContiguousKVCache

# progress(stage, done, total): stage is "collect" (windows run) or "fit" (layers split and routed).
MoefyProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LayerSplit:
    """One dense MLP cut into experts: neuron ids per expert [E, I] and the router [E, D] in score
    units (predicted log output norm), before any checkpoint-specific scaling."""

    neurons: torch.Tensor
    router: torch.Tensor
    top_k_recall: float  # share of (token, true top-k expert) pairs the router also picks, on the fit data
    shared: torch.Tensor  # neuron ids of the always-on shared expert [S] (may be empty)


@torch.inference_mode()
def collect_mlp_inputs(model, ids: list[int] | list[list[int]], window: int = 512, max_tokens: int = 8192,
                       progress: MoefyProgress | None = None) -> list[torch.Tensor]:
    """Run the dense model over `ids` (one token list, or several sequences, each on its own) in
    independent windows and keep every layer's MLP input (the post-attention-norm hidden state)
    -> per layer [N, D] fp32, N = the first max_tokens tokens of the first sequence + all the others."""
    sequences = [ids] if not ids or isinstance(ids[0], int) else ids
    sequences = [sequences[0][:max_tokens], *sequences[1:]]
    captured: list[list[torch.Tensor]] = [[] for _ in model.layers]
    hooks = [layer.mlp.register_forward_hook(
        lambda module, args, out, i=i: captured[i].append(args[0].reshape(-1, args[0].shape[-1]).float().cpu()))
        for i, layer in enumerate(model.layers)]
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    chunks = [seq[start:start + window] for seq in sequences for start in range(0, len(seq), window)]
    try:
        for n, chunk in enumerate(chunks):
            cache = ContiguousKVCache(model.config, len(chunk), device=device, dtype=dtype)
            model(torch.tensor([chunk], device=device), cache.view(0, len(chunk)))
            if progress:
                progress("collect", n + 1, len(chunks))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(parts) for parts in captured]


def neuron_activations(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's hidden activations silu(h·gate) * (h·up) -> [N, F]."""
    return F.silu(h @ w_gate.T) * (h @ w_up.T)


def balanced_kmeans(features: torch.Tensor, n_clusters: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster the rows of `features` [F, X] into n_clusters groups of exactly F/n_clusters rows
    (cosine similarity to the centroids; a greedy capacity-limited assignment each round).
    Returns row ids per cluster [n_clusters, F/n_clusters], each row sorted."""
    n = features.shape[0]
    if n % n_clusters:
        raise ValueError(f"{n} neurons do not split into {n_clusters} equal experts")
    size = n // n_clusters
    x = F.normalize(features.float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(n, generator=g)[:n_clusters]]
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        sim = x @ centers.T  # [F, C]
        new = _assign_balanced(sim, size)
        if torch.equal(new, labels):
            break
        labels = new
        centers = F.normalize(F.one_hot(labels, n_clusters).T.float() @ x, dim=1)
    return torch.stack([torch.nonzero(labels == c).flatten() for c in range(n_clusters)])


def _assign_balanced(sim: torch.Tensor, size: int) -> torch.Tensor:
    """Greedy: take (row, cluster) pairs best-first; a row goes to the first cluster with room."""
    n, c = sim.shape
    order = torch.argsort(sim.flatten(), descending=True).tolist()
    labels = [-1] * n
    room = [size] * c
    left = n
    for flat in order:
        row, cluster = divmod(flat, c)
        if labels[row] < 0 and room[cluster] > 0:
            labels[row] = cluster
            room[cluster] -= 1
            left -= 1
            if left == 0:
                break
    return torch.tensor(labels)


def expert_output_norms(acts: torch.Tensor, w_down: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """|| expert e's output || per token -> [N, E]: how much each expert adds to the MLP's output."""
    return torch.stack([(acts[:, idx] @ w_down[:, idx].T).norm(dim=-1) for idx in neurons], dim=1)


def fit_router(h: torch.Tensor, scores: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Ridge least squares h [N, D] -> scores [N, E]; returns the router weight [E, D] (no bias:
    the HF routers have none). Scores are centred per token first: only their order per token matters."""
    target = scores - scores.mean(dim=1, keepdim=True)
    gram = h.T @ h
    gram.diagonal().add_(ridge * gram.diagonal().mean())
    return torch.linalg.solve(gram, h.T @ target).T.contiguous()


def top_k_recall(pred: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Share of each token's true top-k experts that the predicted scores also rank in their top-k."""
    p = torch.zeros_like(pred, dtype=torch.bool).scatter_(1, pred.topk(k, dim=1).indices, True)
    t = torch.zeros_like(truth, dtype=torch.bool).scatter_(1, truth.topk(k, dim=1).indices, True)
    return float((p & t).sum() / t.sum())


def split_layer(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                n_experts: int, top_k: int, n_shared: int = 0, seed: int = 0) -> LayerSplit:
    """Keep the n_shared neurons that contribute most on average as an always-on shared expert,
    cluster the rest by co-activation on `h` into n_experts, and fit the router."""
    acts = neuron_activations(h, w_gate.float(), w_up.float())  # [N, F]
    contribution = acts.abs().mean(0) * w_down.float().norm(dim=0)  # mean |output| each neuron adds
    shared = torch.sort(contribution.topk(n_shared).indices).values if n_shared else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(acts.shape[1], dtype=torch.bool)
    keep[shared] = False
    rest = torch.nonzero(keep).flatten()
    neurons = rest[balanced_kmeans(acts[:, rest].abs().T, n_experts, seed=seed)]
    log_norms = torch.log(expert_output_norms(acts, w_down.float(), neurons) + 1e-6)
    router = fit_router(h, log_norms)
    return LayerSplit(neurons, router, top_k_recall(h @ router.T, log_norms, top_k), shared)


def split_model(config: ModelConfig, tensors: dict[str, torch.Tensor], inputs: list[torch.Tensor],
                n_experts: int, top_k: int, n_shared: int = 0, dense_layers: int = 0,
                progress: MoefyProgress | None = None) -> list[LayerSplit | None]:
    """One split per layer; None for the first `dense_layers` layers, which stay dense."""
    splits: list[LayerSplit | None] = []
    for i, h in enumerate(inputs):
        if i < dense_layers:
            splits.append(None)
            continue
        p = f"layers.{i}.mlp."
        splits.append(split_layer(h, tensors[p + "w_gate.weight"], tensors[p + "w_up.weight"],
                                  tensors[p + "w_down.weight"], n_experts, top_k, n_shared, seed=i))
        if progress:
            progress("fit", i + 1, config.n_layers)
    return splits


def expert_tensors(tensors: dict[str, torch.Tensor], layer: int, neurons: torch.Tensor) -> dict[str, torch.Tensor]:
    """The dense layer's weights regrouped by expert: canonical stacked w_gate/w_up [E, I, D], w_down [E, D, I]."""
    p = f"layers.{layer}.mlp."
    gate, up, down = tensors[p + "w_gate.weight"], tensors[p + "w_up.weight"], tensors[p + "w_down.weight"]
    return {p + "w_gate": gate[neurons], p + "w_up": up[neurons],
            p + "w_down": torch.stack([down[:, idx] for idx in neurons])}


def moefied_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], splits: list[LayerSplit | None],
                    inputs: list[torch.Tensor], top_k: int) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The dense checkpoint's tensors with every split MLP replaced by its experts and router, in the
    convention of engine/moefy/checkpoint.py (down_proj × E, router × a tiny global scale); layers
    without a split keep their dense MLP tensors."""
    from engine.moefy.checkpoint import moe_config, router_scale

    routed = [(s, h) for s, h in zip(splits, inputs) if s is not None]
    n_experts, n_shared = routed[0][0].neurons.shape[0], len(routed[0][0].shared)
    # one scale: the config holds one
    scale = min(router_scale([s.router for s, _ in routed], [h for _, h in routed]))
    moe = moe_config(config, n_experts, top_k, shared=n_shared, scale=scale,
                     moe_layers=tuple(s is not None for s in splits))
    out = {k: v for k, v in tensors.items() if ".mlp." not in k}
    for i, split in enumerate(splits):
        p = f"layers.{i}.mlp."
        if split is None:
            out.update({k: v for k, v in tensors.items() if k.startswith(p)})
            continue
        experts = expert_tensors(tensors, i, split.neurons)
        experts[p + "w_down"] = experts[p + "w_down"] * n_experts
        out.update(experts)
        out[p + "router.weight"] = split.router * scale
        if n_shared:  # Qwen2-MoE gates it by sigmoid(shared_gate·x): a zero gate is exactly 1/2
            out[p + "shared.w_gate.weight"] = tensors[p + "w_gate.weight"][split.shared]
            out[p + "shared.w_up.weight"] = tensors[p + "w_up.weight"][split.shared]
            out[p + "shared.w_down.weight"] = tensors[p + "w_down.weight"][:, split.shared] * 2
            out[p + "shared_gate.weight"] = torch.zeros(1, config.dim, dtype=tensors[p + "w_gate.weight"].dtype)
    return moe, out


# The recipe's defaults, measured on the default model (docs/benchmarks.md, "MoEfication"): at top-2
# of 8, with the first layer dense and routers that have seen chat text, a shared half gives
# perplexity ~54 and broken chat answers, five eighths ~46 and still broken ones ("a state of a
# state of ..."), three quarters ~39 and answers in sentences ("The capital of France is Paris").
SHARED_FRACTION = 0.75
DENSE_LAYERS = 1


def chat_fit_sequences(ckpt) -> list[list[int]]:
    """The shipped chat transcripts, each rendered with the model's chat template (as the engine
    renders chats) -> token ids."""
    import json

    from engine.text.chat_template import ChatTemplate
    from engine.instrumentation.quality import SHIPPED_TEXT

    template = ChatTemplate.of(ckpt.tokenizer)
    turns = json.loads((SHIPPED_TEXT.parent / "chat_transcripts.json").read_text(encoding="utf-8"))
    chats = [[{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["assistant"]}]
             for t in turns]
    return [ckpt.tokenizer.encode(template.render(chat, add_generation_prompt=False)) for chat in chats]


def moefy(source, out, n_experts: int = 8, top_k: int = 2, max_tokens: int = 4096,
          progress: MoefyProgress | None = None, shared_fraction: float = SHARED_FRACTION,
          dense_layers: int = DENSE_LAYERS) -> dict:
    """Build the MoEfied checkpoint of `source` (a dense SwiGLU model; None = the default model) in
    directory `out`, fitting the routers on the shipped text (its first max_tokens tokens) and the
    shipped chat transcripts. Returns the build report (also written to out/moefy.json)."""
    from engine.loaders import load_checkpoint
    from engine.instrumentation.quality import SHIPPED_TEXT

    ckpt = load_checkpoint(source)
    prose = ckpt.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"))
    chats = chat_fit_sequences(ckpt)
    return build(ckpt, [prose, *chats], out, n_experts, top_k, max_tokens, progress,
                 fit_text=SHIPPED_TEXT.name + " + chat_transcripts.json",
                 shared_fraction=shared_fraction, dense_layers=dense_layers)


def build(ckpt, ids: list[int] | list[list[int]], out, n_experts: int, top_k: int, max_tokens: int = 4096,
          progress: MoefyProgress | None = None, fit_text: str = "", shared_fraction: float = 0.0,
          dense_layers: int = 0) -> dict:
    """moefy() on an already loaded checkpoint (engine.loaders.Checkpoint) and fit tokens (one list,
    or several sequences; max_tokens caps the first). shared_fraction: share of each MLP's neurons kept
    always on (Qwen2-MoE's shared expert); the rest is split into n_experts routed experts.
    dense_layers: how many leading layers keep their dense MLP."""
    from pathlib import Path

    from engine.model import Decoder
    from engine.moefy.checkpoint import write_checkpoint

    config = ckpt.config
    if config.moe is not None or not config.hidden_dim:
        raise ValueError(f"{ckpt.source.name} is already a mixture of experts")
    if config.mlp_activation != "silu":  # the experts are SwiGLUs: a GeGLU (Gemma) would change its function
        raise ValueError(f"{ckpt.source.name}'s MLP is not a SwiGLU ({config.mlp_activation}): MoEfication "
                         "splits SwiGLU MLPs only")
    n_shared = round(config.hidden_dim * shared_fraction)
    if not 0 <= n_shared < config.hidden_dim or (config.hidden_dim - n_shared) % n_experts:
        raise ValueError(f"the MLP width {config.hidden_dim} minus {n_shared} shared neurons does not split "
                         f"into {n_experts} equal experts")
    if not 0 < top_k <= n_experts:
        raise ValueError(f"top-k must be in 1..{n_experts}")
    if not 0 <= dense_layers < config.n_layers:
        raise ValueError(f"dense layers must be in 0..{config.n_layers - 1}")
    started = time.perf_counter()
    model = Decoder.from_tensors(config, ckpt.tensors)
    inputs = collect_mlp_inputs(model, ids, max_tokens=max_tokens, progress=progress)
    del model
    splits = split_model(config, ckpt.tensors, inputs, n_experts, top_k, n_shared, dense_layers, progress=progress)
    moe, tensors = moefied_tensors(config, ckpt.tensors, splits, inputs, top_k)
    report = {"source": str(ckpt.source), "experts": n_experts, "top_k": top_k, "shared_neurons": n_shared,
              "expert_neurons": (config.hidden_dim - n_shared) // n_experts, "dense_layers": dense_layers,
              "fit_tokens": len(inputs[0]),
              "fit_text": fit_text, "router_scale": moe.moe.router_scale,
              "router_top_k_recall": [round(s.top_k_recall, 4) for s in splits if s is not None],
              "build_seconds": round(time.perf_counter() - started, 1)}
    write_checkpoint(Path(out), moe, tensors, ckpt.tokenizer, source=ckpt.source.name, extra=report)
    return report


# The MoE the app offers next to the default model: built from it on first use, then cached.
# Top-2 of 8 routed experts (48 neurons each) next to the always-on shared three quarters: 1248 of
# 1536 neurons per token in layers 1-29 (docs/benchmarks.md, "MoEfication"). The folder name carries
# the recipe's version, so a cache built by an older recipe is not mistaken for this one.
BUILTIN_MOE = {"label": "SmolLM2-135M-MoE 8×top-2", "folder": "SmolLM2-135M-MoE-8x2-v2", "experts": 8, "top_k": 2}


def ensure_builtin_moe(cache_root, progress: MoefyProgress | None = None, build_fn=None) -> "Path":
    """The built-in MoE's folder under `cache_root`, building it first if it is not there yet.
    Built into a '.partial' folder and renamed when complete, so a cancelled or failed build
    (progress may raise to cancel) never leaves a half-written model that looks finished."""
    import shutil
    from pathlib import Path

    root = Path(cache_root)
    final = root / BUILTIN_MOE["folder"]
    if (final / "moefy.json").is_file():
        return final
    partial = root / (BUILTIN_MOE["folder"] + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    try:
        (build_fn or moefy)(None, partial, BUILTIN_MOE["experts"], BUILTIN_MOE["top_k"], progress=progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final
