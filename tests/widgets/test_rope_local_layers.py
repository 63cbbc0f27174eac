"""Gemma 3's sliding-window layers rotate with their own base and no scaling: the RoPE view names them
and the panel says so in words (its curves are the global layers')."""
from engine.config import ModelConfig
from engine.instrumentation.rope_view import rope_view
from widgets.rope_panel import describe_layout, layer_ranges


def test_the_rope_view_names_the_layers_on_their_own_base():
    config = ModelConfig.from_hf({"model_type": "gemma3_text", "vocab_size": 128, "hidden_size": 64,
                                  "intermediate_size": 96, "num_hidden_layers": 8, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1e6,
                                  "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    view = rope_view(config)
    assert view.local_layers == (0, 1, 2, 3, 4, 6, 7) and view.local_theta == 1e4
    assert view.scaling == "linear" and view.theta == 1e6  # the curves: the global layers'
    assert ("sliding-window layers (0–4, 6–7) rotate with their own base θ = 10,000 and no scaling"
            in describe_layout(view))
    llama = rope_view(ModelConfig(arch="llama", vocab_size=8, dim=8, n_layers=2, n_heads=2, n_kv_heads=2,
                                  head_dim=4, hidden_dim=8))
    assert llama.local_layers == () and describe_layout(llama) == ""


def test_layer_ranges():
    assert layer_ranges((0, 1, 2, 5, 7, 8)) == "0–2, 5, 7–8"
