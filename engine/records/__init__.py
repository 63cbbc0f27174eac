"""The plain-data boundary between the engine and everything else (CLI, window, tests).

Only frozen dataclasses of Python values: no torch tensors and no Qt, so a widget can import this
package without pulling in torch. requests.py: what a caller asks; stream.py: what generation
streams back; views.py: inspection computed on request; model.py: load options and model facts.
"""
from engine.records.adapters import AdapterComparisonView, AdapterFacts
from engine.records.model import LoadOptions, ModelFacts
from engine.records.requests import GenerationRequest, InstrumentOptions, SamplingParams, SpeculativeOptions
from engine.records.stream import (AttentionRecord, DraftToken, GenerationDone, MemorySnapshot, PromptRecord,
                                   RequestDone, RoutingRecord, SequenceResult, SpecStep, StepRecord, TokenProb,
                                   TokenStep)
from engine.records.views import (INTERVENTION_KINDS, AttentionView, DistributionView, Intervention, InterventionView,
                                  LogitLensView, QuantDiff, QuantDriftView, RopeView, RouterStats, StageView)

__all__ = ["AdapterComparisonView", "AdapterFacts",
           "LoadOptions", "ModelFacts", "GenerationRequest", "InstrumentOptions", "SamplingParams",
           "SpeculativeOptions", "AttentionRecord", "DraftToken", "GenerationDone", "MemorySnapshot", "PromptRecord",
           "RequestDone", "RoutingRecord", "SequenceResult", "SpecStep", "StepRecord", "TokenProb", "TokenStep",
           "AttentionView", "DistributionView", "QuantDiff", "RouterStats", "StageView", "INTERVENTION_KINDS",
           "Intervention", "InterventionView", "LogitLensView", "QuantDriftView", "RopeView"]
