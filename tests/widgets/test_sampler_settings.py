"""Every sampler setting in the sampler panel (issue 20): penalties, stop strings, seed, n / best-of / beams
with GenerationRequest's rules kept by the controls, and user presets (save as, rename, delete, persisted
through app/settings.py, the active one named, "(modified)" when a knob moves)."""
import dataclasses

import pytest

from app.settings import Settings
from engine.records import GenerationRequest, SamplingParams, SpeculativeOptions
from widgets.sampler_panel import BUILT_IN, PRESET_FIELDS, SamplerPanel
from widgets.sampler_panel.stops import escape, unescape


def panel_for(qtbot) -> SamplerPanel:
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    return panel


def test_each_new_control_maps_to_its_field(qtbot):
    panel = panel_for(qtbot)
    with qtbot.waitSignal(panel.params_changed) as blocker:
        panel.knobs["presence_penalty"].spin.setValue(-1.5)
    assert blocker.args[0].presence_penalty == -1.5 and panel.knobs["presence_penalty"].slider.value() == -30
    panel.knobs["frequency_penalty"].slider.setValue(40)  # 40 steps of 0.05: the range's top, 2
    assert panel.params().frequency_penalty == 2.0
    assert (panel.knobs["presence_penalty"].spin.minimum(), panel.knobs["presence_penalty"].spin.maximum()) == (-2, 2)
    with qtbot.waitSignal(panel.params_changed) as blocker:
        panel.stops.setPlainText("###\n\\nUser: \n\n###")  # an empty line and a repeat are not stop strings
    assert blocker.args[0].stop == ("###", "\nUser: ")
    panel.random_seed.setChecked(False)
    panel.seed.setValue(1234)
    assert panel.params().seed == 1234
    with qtbot.waitSignal(panel.shape_changed) as blocker:
        panel.n_samples.setValue(3)
    assert blocker.args[0] == dict(n=3, best_of=0, beams=0) == panel.request_shape()
    panel.best_of.setValue(5)
    assert panel.request_shape() == dict(n=3, best_of=5, beams=0)
    GenerationRequest((1,), panel.params(), **panel.request_shape())  # the engine takes it as it is
    panel.set_request_shape(dict(n=2, best_of=4, beams=0))
    assert panel.request_shape() == dict(n=2, best_of=4, beams=0)
    panel.set_request_shape(dict(beams=3))
    assert panel.request_shape() == dict(n=1, best_of=0, beams=3)


def test_stop_strings_keep_spaces_and_escapes_both_ways():
    for text in ("###", "\nUser:", " end ", "tab\there", "a\\nb", "\\", "back\\\\slash\r\n"):
        assert unescape(escape(text)) == text
    assert unescape("x\\qy") == "x\\qy"  # an unknown escape stays as typed
    assert escape("\nUser:") == "\\nUser:"


def test_best_of_never_falls_below_n(qtbot):
    panel = panel_for(qtbot)
    panel.best_of.setValue(4)
    panel.n_samples.setValue(6)  # raising n raises best-of with it
    assert panel.request_shape() == dict(n=6, best_of=6, beams=0)
    panel.best_of.setValue(2)  # lowering best-of brings n down
    assert panel.request_shape() == dict(n=2, best_of=2, beams=0)
    panel.best_of.setValue(0)  # off: n stays
    assert panel.request_shape() == dict(n=2, best_of=0, beams=0)
    panel.set_request_shape(dict(n=5, best_of=2, beams=0))  # an invalid shape from outside is made valid
    assert panel.request_shape() == dict(n=5, best_of=5, beams=0)
    for n in range(1, 5):  # every reachable shape is one the engine accepts
        for best_of in range(0, 6):
            panel.n_samples.setValue(n)
            panel.best_of.setValue(best_of)
            GenerationRequest((1,), **panel.request_shape())


def test_beams_disable_the_sampling_knobs_and_speculation(qtbot):
    panel = panel_for(qtbot)
    panel.n_samples.setValue(3)
    assert panel.beam_note.isHidden() and panel.knobs["temperature"].isEnabled()
    with qtbot.waitSignal(panel.shape_changed) as blocker:
        panel.beams.setValue(4)
    assert blocker.args[0] == dict(n=1, best_of=0, beams=4)
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):
        assert not panel.knobs[name].isEnabled(), name
    assert panel.knobs["max_new_tokens"].isEnabled() and panel.stops.isEnabled()
    assert not any(w.isEnabled() for w in (panel.seed, panel.random_seed, panel.n_samples, panel.best_of,
                                           panel.drafter, panel.spec_k))
    assert not panel.beam_note.isHidden() and "do not apply" in panel.beam_note.text()
    panel.beams.setValue(0)  # back to sampling: everything returns, n as it was
    assert panel.knobs["temperature"].isEnabled() and panel.drafter.isEnabled() and panel.beam_note.isHidden()
    assert panel.request_shape() == dict(n=3, best_of=0, beams=0)
    # A drafter blocks beams, and says why.
    with qtbot.waitSignal(panel.speculative_changed):
        panel.drafter.setCurrentIndex(1)
    assert not panel.beams.isEnabled() and "speculative" in panel.beams.toolTip()
    # Beams asked for from outside (a preset) switch the drafter off: the request stays valid.
    seen = []
    panel.speculative_changed.connect(seen.append)
    panel.set_request_shape(dict(beams=2))
    assert seen[-1] == SpeculativeOptions() == panel.speculative() and panel.beams.isEnabled()
    GenerationRequest((1,), panel.params(), speculative=panel.speculative(), **panel.request_shape())
    panel.set_request_shape(dict(beams=0))
    panel.drafter.setCurrentText("ngram")  # typed, as an engine name
    assert panel.speculative().enabled and not panel.beams.isEnabled()
    panel.set_request_shape(dict(beams=2))
    assert panel.drafter.currentText() == "Off" and not panel.speculative().enabled


def test_folded_settings_that_are_on_are_counted(qtbot):
    panel = panel_for(qtbot)
    assert panel.more_box.isHidden() and "on)" not in panel.more.text()
    panel.set_params(SamplingParams(presence_penalty=0.5, stop=("###",)))
    panel.set_request_shape(dict(n=2))
    assert "(3 on)" in panel.more.text()
    panel.more.click()
    assert not panel.more_box.isHidden()


def test_preset_round_trip_persisted_and_marked_modified(qtbot, tmp_path):
    path = str(tmp_path / "settings.ini")
    settings = Settings(path=path)
    panel = panel_for(qtbot)
    panel.presets.user_presets_changed.connect(settings.set_user_presets)
    panel.presets.active_changed.connect(settings.set_active_preset)
    assert panel.presets.combo.currentText() == "Custom" and panel.presets.state.isHidden()

    panel.presets.choose("Balanced")
    assert panel.presets.combo.currentText() == "Balanced" and panel.presets.state.isHidden()
    panel.knobs["temperature"].spin.setValue(0.9)  # a knob moves away
    assert panel.presets.modified() and not panel.presets.state.isHidden()
    assert panel.presets.state.text() == "(modified)"
    panel.knobs["temperature"].spin.setValue(0.7)  # and back
    assert not panel.presets.modified() and panel.presets.state.isHidden()
    panel.n_samples.setValue(2)  # the request's shape is part of a preset
    assert panel.presets.modified()
    panel.presets.combo.activated.emit(panel.presets.combo.currentIndex())  # chosen again: its values back
    assert not panel.presets.modified() and panel.request_shape()["n"] == 1

    # Save as (through the menu, the name asked for), rename, delete.
    wanted = SamplingParams(temperature=1.3, top_k=40, presence_penalty=0.4, stop=("\nUser:", " END "), seed=5)
    panel.set_params(wanted)
    panel.set_request_shape(dict(n=2, best_of=3))
    panel.presets.ask_name = lambda title, text: ("Story time", True)
    panel.presets.save_as_action.trigger()
    assert panel.presets.active() == "Story time" == panel.presets.combo.currentText()
    assert settings.active_preset() == "Story time" and not panel.presets.modified()
    assert set(settings.user_presets()["Story time"]) == set(PRESET_FIELDS)
    with pytest.raises(ValueError):
        panel.presets.save_as("Greedy")  # a built-in's name
    with pytest.raises(ValueError):
        panel.presets.delete("Greedy")  # built-ins stay
    with pytest.raises(ValueError):
        panel.presets.rename("Greedy", "Mine")
    panel.presets.ask_name = lambda title, text: ("Stories", True)
    panel.presets.rename_action.trigger()
    assert panel.presets.active() == "Stories" and list(settings.user_presets()) == ["Stories"]
    panel.presets.save_as("Scratch")
    panel.presets.choose("Greedy")
    assert not panel.presets.delete_action.isEnabled()  # a built-in is active: nothing of yours to delete
    panel.presets.choose("Scratch")
    panel.presets.delete_action.trigger()
    assert panel.presets.active() == "" and panel.presets.combo.currentText() == "Custom"
    assert list(settings.user_presets()) == ["Stories"]
    panel.presets.choose("Stories")
    settings.set_sampling(panel.params())
    settings.set_request_shape(panel.request_shape())
    settings.sync()

    # A new Settings object on the same file, a new panel: the presets, the active one and the values.
    again_settings = Settings(path=path)
    assert again_settings.sampling().stop == ("\nUser:", " END ")
    again = panel_for(qtbot)
    again.presets.set_user_presets(again_settings.user_presets())
    again.set_params(again_settings.sampling())
    again.set_request_shape(again_settings.request_shape())
    again.presets.set_active(again_settings.active_preset())
    assert again.presets.active() == "Stories" and again.presets.combo.currentText() == "Stories"
    assert not again.presets.modified()
    assert again.params() == dataclasses.replace(wanted, max_new_tokens=again.params().max_new_tokens)
    assert again.request_shape() == dict(n=2, best_of=3, beams=0)
    again.presets.choose("Greedy")
    again.presets.choose("Stories")  # the stored preset applies itself: JSON lists back to stop tuples
    assert again.params().stop == ("\nUser:", " END ") and again.params().temperature == 1.3
    assert [again.presets.combo.itemText(i) for i in range(again.presets.combo.count())
            if again.presets.combo.itemText(i)] == ["Custom", *BUILT_IN, "Stories"]


def test_damaged_stored_presets_read_as_none(qtbot, tmp_path):
    settings = Settings(path=str(tmp_path / "settings.ini"))
    settings.q.setValue("presets/user", "{not json")
    settings.q.setValue("sampler/n", "many")
    settings.q.setValue("sampler/stop", "[1, 2]")
    assert settings.user_presets() == {} and settings.request_shape() == dict(n=1, best_of=0, beams=0)
    assert settings.sampling().stop == ()
    panel = panel_for(qtbot)
    panel.presets.set_user_presets({"Broken": {"temperature": -4}, "Greedy": {"temperature": 2.0}})
    assert "Greedy" not in panel.presets.user_presets()  # a built-in's name is not taken over
    before = panel.params()
    panel.presets.choose("Broken")  # an impossible value: the knobs stay as they were
    assert panel.params() == before
