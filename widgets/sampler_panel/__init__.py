"""The sampler panel (panel.py) and its parts: knobs and their ranges (controls.py), presets (presets.py),
stop strings (stops.py). `from widgets.sampler_panel import SamplerPanel` is the way in."""
from widgets.sampler_panel.controls import CONSTRAINT_EXAMPLES, DRAFTERS, KNOBS
from widgets.sampler_panel.panel import SamplerPanel
from widgets.sampler_panel.presets import BUILT_IN, PRESET_FIELDS

__all__ = ["BUILT_IN", "CONSTRAINT_EXAMPLES", "DRAFTERS", "KNOBS", "PRESET_FIELDS", "SamplerPanel"]
