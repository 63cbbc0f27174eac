"""The LoRA comparison as a laptop shows it (docs/screenshots/adapter_comparison.png), 1366×768 under Xvfb:
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_adapter.py
A random LoRA adapter is made by `peft` (a test dependency) for the default model's shapes (SmolLM2-135M,
llama), saved as PEFT saves it, and added through File → Add LoRA adapter… at scale 0.6 after a real chat
with the default model (its Q4_1 weights stay packed: the adapter runs beside them); then a token with
rivals is clicked and the LoRA dock is saved as the screen shows it. Nothing here is a trained adapter:
it shows what the panel draws, not what an adapter teaches."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import chat, new_window, shoot_dock, wait_for, wait_until  # noqa: E402

B_SCALE = 3.0  # the random B's size: a visible shift of the distribution (KL ~0.1-0.3 nats), not a wreck


def make_demo_adapter(folder: Path) -> Path:
    """A random rank-8 LoRA on q_proj, v_proj and down_proj for the default model's shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.loaders import default_model_path, load_checkpoint

    c = load_checkpoint(default_model_path()).config
    config = LlamaConfig(hidden_size=c.dim, intermediate_size=c.hidden_dim, num_hidden_layers=c.n_layers,
                         num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, vocab_size=c.vocab_size,
                         head_dim=c.head_dim, tie_word_embeddings=True)
    torch.manual_seed(7)
    with torch.device("meta"):  # the base weights are never saved: only the adapter's
        base = LlamaForCausalLM(config)
    model = get_peft_model(base.to_empty(device="cpu"), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, B_SCALE / c.dim ** 0.5)
            elif "lora_A" in name:
                p.normal_(0, 1 / p.shape[1] ** 0.5)
    model.save_pretrained(folder)
    return folder


def main() -> int:
    from engine.records import LoadOptions, SamplingParams

    app, window = new_window()
    folder = make_demo_adapter(Path(tempfile.mkdtemp()) / "demo-style-lora")
    window.load_model(None, LoadOptions(device="cpu"))
    wait_for(window.worker.loaded)
    window.sampler.set_params(SamplingParams(temperature=0.7, top_p=0.9, seed=4, max_new_tokens=40))
    chat(window, "Give me three tips for staying healthy, as a numbered list.")
    window.adapters.add(str(folder))
    wait_until(lambda: window.adapter_panel.adapter_names() == [folder.name])
    window.adapter_panel.row(folder.name).scale.setValue(0.6)
    wait_until(lambda: "×0.6" in window.adapter_panel.banner.text())
    steps = window.controller.steps
    pick = next((i for i, s in enumerate(steps) if i >= 6 and 0.2 < s.prob < 0.7), 6)  # a token with rivals
    window.chat.step_clicked.emit(pick)
    wait_until(lambda: window.adapter_panel.view is not None)
    shoot_dock(app, window, "LoRA", "adapter_comparison")
    view = window.adapter_panel.view
    print(f"token {view.position}: KL {view.kl:.3f}, top-1 {'same' if view.top1_same else 'changed'}")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
