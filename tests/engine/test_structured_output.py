"""Structured output: JSON-schema / regex / grammar constraints on the default model, checked against
references (jsonschema, re.fullmatch, the fixed set of strings, a brute-force mask over the vocabulary,
the unconstrained chain on a -inf-padded vector). Requests are submitted together so that one batched
decode step serves every sequence: 60 constrained sequences cost ~30 forward passes."""
import json
import re

import jsonschema
import pytest
import torch

from engine.text.constraints import ConstraintError, TokenConstraint, _TokenBytes, draft_masks, vocabulary_for
from engine.errors import EngineError
from engine.records import GenerationRequest, InstrumentOptions, RequestDone, SamplingParams, StepRecord
from engine.sampling import CONSTRAINT, STAGES, run_chain, run_chain_sparse, sample

pytestmark = pytest.mark.slow


def S(n):  # a bounded string, so that greedy decoding of a small model cannot ramble past the token budget
    return {"type": "string", "maxLength": n}


def obj(required=None, **properties):
    return {"type": "object", "properties": properties, "required": list(required or properties),
            "additionalProperties": False}


INT = lambda lo, hi: {"type": "integer", "minimum": lo, "maximum": hi}  # noqa: E731
SCHEMAS = [  # nested objects, arrays, enums, bounded numbers, required / optional, patterns
    obj(name=S(12), age=INT(0, 120)),
    obj(colour={"enum": ["red", "green", "blue"]}),
    {"type": "array", "items": INT(-5, 5), "minItems": 1, "maxItems": 4},
    obj(user=obj(id=INT(1, 999), email={"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"})),
    obj(["ok"], ok={"type": "boolean"}, note=S(10)),
    obj(price={"type": "number", "minimum": 0, "maximum": 100}),
    obj(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}),
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 3},
    obj(tags={"type": "array", "items": S(6), "maxItems": 3}, count=INT(0, 9)),
    obj(["point"], point=obj(x=INT(-9, 9), y=INT(-9, 9)), label=S(8)),
    INT(10, 99),
    {"enum": ["yes", "no", 3, None]},
    obj(kind={"const": "event"}, day=INT(1, 31)),
    obj(["a"], a=INT(0, 9), b=INT(0, 9), c=S(5)),
    {"type": "array", "items": obj(n=INT(0, 50)), "maxItems": 2},
    obj(value={"anyOf": [INT(0, 9), S(5)]}),
    obj(temp={"type": "number", "minimum": -50, "maximum": 50}, unit={"enum": ["C", "F"]}),
    obj(date={"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}),
    obj(matrix={"type": "array", "items": {"type": "array", "items": INT(0, 9), "minItems": 2, "maxItems": 2},
                "minItems": 2, "maxItems": 2}),
    obj(title=S(10), done={"type": "boolean"}, priority={"enum": [1, 2, 3]}),
]


@pytest.fixture(scope="module")
def engine():
    from engine.engine import Engine

    return Engine.load()


def constrained(kind, text, temperature=0.0, seed=0, max_new_tokens=48):
    return SamplingParams(temperature=temperature, seed=seed, max_new_tokens=max_new_tokens, constraint_kind=kind,
                          constraint=text)


def run_all(runner, specs):
    """Submit every request, step until all are done; RequestDone per request, in order."""
    ids = [runner.submit(s) for s in specs]
    done = {}
    while runner.has_work():
        done.update((x.request_id, x) for x in runner.step() if isinstance(x, RequestDone))
    return [done[i] for i in ids]


def greedy_and_sampled(engine, kind, texts, max_new_tokens=48, beams=0):
    """For each constraint: one greedy request and one request of two temperature-1 samples (seeded)."""
    prompt = tuple(engine.chat_prompt_ids([{"role": "user", "content": "Reply with JSON only."}]))
    specs = []
    for i, text in enumerate(texts):
        specs.append(GenerationRequest(prompt, constrained(kind, text, 0.0, i, max_new_tokens), beams=beams))
        specs.append(GenerationRequest(prompt, constrained(kind, text, 1.0, i, max_new_tokens), n=2))
    results = run_all(engine, specs)
    assert all(d.error is None for d in results), [d.error for d in results if d.error]
    return [(texts[k // 2], r) for k, d in enumerate(results) for r in d.results]


# --- acceptance 1: twenty schemas, greedy and temperature 1 ------------------------------------------

def test_twenty_schemas_always_parse_and_validate(engine):
    outputs = greedy_and_sampled(engine, "json_schema", [json.dumps(s) for s in SCHEMAS])
    assert len(outputs) == 3 * len(SCHEMAS)
    for schema, result in outputs:
        assert result.finish_reason == "eos", (schema, result.text)
        jsonschema.validate(json.loads(result.text), json.loads(schema))


# --- acceptance 2: regular expressions and a grammar of fixed strings ---------------------------------

REGEXES = [r"\(\d{3}\) \d{3}-\d{4}", r"(yes|no), because [a-z ]{3,12}\.", r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8}){0,2}",
           r"0x[0-9a-f]{4}", r"(ab|cd)+!"]


def test_regex_output_always_matches(engine):
    outputs = greedy_and_sampled(engine, "regex", REGEXES, max_new_tokens=24)
    assert len(outputs) == 3 * len(REGEXES)
    for regex, result in outputs:
        if result.finish_reason == "eos":
            assert re.fullmatch(regex, result.text), (regex, result.text)
        else:  # only an unbounded repetition may run out of tokens; what it wrote is still a valid prefix
            assert regex == r"(ab|cd)+!" and re.fullmatch(r"(ab|cd)*(a|c)?", result.text), result.text


FIXED = ["red", "green", "blue", "blue sky", "maybe later"]
GRAMMARS = {  # the same language as llama.cpp GBNF and as Lark
    "gbnf": 'root ::= "red" | "green" | "blue" | "blue sky" | "maybe later"',
    "lark": 'start: "red" | "green" | "blue" | "blue sky" | "maybe later"',
}


def test_fixed_set_grammar_yields_one_of_its_strings_greedy_sampled_and_beams(engine):
    outputs = greedy_and_sampled(engine, "grammar", list(GRAMMARS.values()), max_new_tokens=8)
    outputs += greedy_and_sampled(engine, "grammar", [GRAMMARS["gbnf"]], max_new_tokens=8, beams=2)[:2]
    assert len(outputs) == 3 * len(GRAMMARS) + 2
    for _, result in outputs:
        assert result.finish_reason == "eos" and result.text in FIXED, result.text


def test_fixed_set_mask_equals_a_brute_force_check_of_every_token(engine):
    """Reference: token t may follow prefix p iff p + text(t) starts one of the strings; EOS iff p is one.
    Where only one string is left (its rest is forced), llguidance allows only the rest's canonical first
    token, so that forced text is tokenized as the model was trained to see it."""
    tok, vocab = engine.tokenizer, engine.config.vocab_size
    texts = [tok.decode([i]) for i in range(vocab)]
    for kind, grammar in GRAMMARS.items():
        c = TokenConstraint.start("grammar", grammar, tok, vocab)
        for prefix_ids in ([], tok.encode("blue"), tok.encode("gre"), tok.encode("maybe")):
            for t in prefix_ids:
                c.advance(t)
            prefix = tok.decode(prefix_ids)
            left = [s for s in FIXED if s.startswith(prefix)]
            if len(left) == 1 and left[0] != prefix:  # forced
                expected = torch.zeros(vocab, dtype=torch.bool)
                expected[tok.encode(left[0][len(prefix):])[0]] = True
            else:
                expected = torch.tensor([i not in tok.special_ids and texts[i] != "" and
                                         any(s.startswith(prefix + texts[i]) for s in left) for i in range(vocab)])
            for eos in tok.eos_ids:
                expected[eos] = prefix in FIXED
            allowed = c.allowed()
            assert torch.equal(allowed, expected), (kind, prefix, torch.nonzero(allowed != expected).flatten()[:10])
            c.rollback(len(prefix_ids))


def test_vocabulary_bytes_agree_between_tokenizer_json_and_the_spelled_out_path(engine):
    tok, vocab = engine.tokenizer, engine.config.vocab_size
    import llguidance

    from_json = vocabulary_for(tok, vocab)
    spelled = llguidance.LLTokenizer(_TokenBytes(tok, vocab), n_vocab=vocab, eos_token=list(tok.eos_ids))
    assert all(from_json.decode_bytes([i]) == spelled.decode_bytes([i]) for i in range(vocab))


# --- acceptance 3: never an empty mask; a clear error when nothing can satisfy the constraint ----------

@pytest.mark.parametrize("kind, text, message", [
    ("json_schema", '{"type": "integer", "minimum": 5, "maximum": 3}', "minimum (5) is greater than maximum (3)"),
    ("json_schema", json.dumps(obj(a={"type": "string", "minLength": 5, "maxLength": 2})), "unsatisfiable"),
    ("json_schema", '{"type": "object",', "not valid JSON"),
    ("regex", "a(", "unclosed group"),
    ("grammar", 'root ::= "a" missing', "rule 'missing' not found"),
    ("grammar", 'start: "a" | nothing_here', "unknown name"),
])
def test_unusable_constraints_fail_with_a_clear_message_and_others_go_on(engine, kind, text, message):
    prompt = engine.prompt_ids("Hello")
    with pytest.raises(EngineError, match=re.compile(re.escape(message), re.I)):
        list(engine.generate(prompt, constrained(kind, text)))
    bad, good = run_all(engine, [GenerationRequest(tuple(prompt), constrained(kind, text)),
                                        GenerationRequest(tuple(prompt), constrained("regex", "[0-9]{2}"))])
    assert bad.error and not bad.results and re.fullmatch("[0-9]{2}", good.results[0].text)
    assert engine.kv_blocks_in_use == 0  # nothing leaked


def test_every_step_keeps_some_token_and_records_the_mask(engine):
    spec = GenerationRequest(tuple(engine.prompt_ids("Answer:")), constrained("json_schema", json.dumps(SCHEMAS[9])),
                             instrument=InstrumentOptions(stored_logits=64, top_n=5))
    records = []
    engine.submit(spec)
    while engine.has_work():
        records += [x for x in engine.step() if isinstance(x, StepRecord)]
    assert records and records[-1].token_id in engine.tokenizer.eos_ids
    jsonschema.validate(json.loads("".join(r.text for r in records)), SCHEMAS[9])
    for r in records:
        assert len(r.logit_allowed) == 64 and r.prob > 0
        # the sampled distribution keeps no stored token the constraint refused, and the chosen one was allowed
        refused = {i for i, ok in zip(r.logit_ids, r.logit_allowed) if not ok}
        assert r.token_id not in refused and not {t.token_id for t in r.top_after if t.prob > 0} & refused


# --- the chain's constraint stage -----------------------------------------------------------------------

def test_constraint_is_a_traced_stage_right_after_raw_and_draws_stay_inside_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, generator=g) * 3
    allowed = torch.rand(300, generator=g) < 0.1
    params = SamplingParams(temperature=1.5, top_k=50, top_p=0.9)
    result = run_chain(logits, params, trace=True, allowed=allowed)
    assert [s.name for s in result.stages] == ["raw", CONSTRAINT, *STAGES[1:]]
    assert result.stage(CONSTRAINT).removed.tolist() == torch.nonzero(~allowed).flatten().tolist()
    reference = run_chain(logits.masked_fill(~allowed, float("-inf")), params)  # plain recompute
    assert torch.allclose(result.probs, reference.probs)
    draws = {sample(logits, params, g, allowed=allowed) for _ in range(500)}
    assert draws <= set(torch.nonzero(allowed).flatten().tolist())
    greedy = SamplingParams(temperature=0)
    assert sample(logits, greedy, allowed=allowed) == int(logits.masked_fill(~allowed, float("-inf")).argmax())
    assert [s.name for s in run_chain(logits, params, trace=True).stages] == list(STAGES)  # unconstrained: as before


def test_sparse_chain_with_the_stored_mask_equals_the_full_chain():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2000, generator=g) * 2
    allowed = torch.rand(2000, generator=g) < 0.5
    top = torch.topk(logits, 64)
    padded = torch.full_like(logits, float("-inf")).scatter(0, top.indices, top.values)
    params = SamplingParams(temperature=0.8, top_p=0.95)
    sparse = run_chain_sparse(top.indices, top.values, params, trace=True, allowed=allowed[top.indices])
    full = run_chain(padded, params, trace=True, allowed=allowed)
    assert torch.allclose(sparse.probs, full.probs[top.indices], atol=1e-6)
    assert sparse.stage(CONSTRAINT).removed.tolist() == sorted(set(top.indices[~allowed[top.indices]].tolist()))


def test_draft_masks_equal_stepwise_masks_and_leave_the_state_alone(engine):
    tok, vocab = engine.tokenizer, engine.config.vocab_size
    c = TokenConstraint.start("regex", r"[a-z]+@[a-z]+\.org", tok, vocab)
    drafts = tok.encode("bob@x.org")
    masks = draft_masks(c, drafts)
    assert torch.equal(masks[0], c.allowed())  # unchanged position
    step = c.fork()
    for i, t in enumerate(drafts):
        assert torch.equal(masks[i], step.allowed())
        step.advance(t)
    assert torch.equal(masks[-1], step.allowed()) and bool(step.allowed()[tok.eos_ids[0]])
    refused = draft_masks(c, tok.encode("BOB@x.org"))  # the first draft is refused: later masks repeat it
    assert all(torch.equal(m, refused[0]) for m in refused)
    with pytest.raises(ConstraintError):
        c.fork().advance(tok.encode("BOB")[0])


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_json_schema_regex_and_grammar(engine, tmp_path, capsys, monkeypatch):
    from engine import cli
    from engine.cli import main

    monkeypatch.setattr(cli, "_load", lambda args: engine)  # the module's loaded default model, not a fresh load
    schema, grammar = tmp_path / "s.json", tmp_path / "g.gbnf"
    schema.write_text(json.dumps(SCHEMAS[1]))
    grammar.write_text(GRAMMARS["gbnf"])
    base = ["generate", "--prompt", "Pick a colour:", "--chat", "--json", "--max-new-tokens", "16"]
    outputs = []
    for extra in (["--json-schema", str(schema)], ["--regex", "[0-9]{3}"], ["--grammar", str(grammar)]):
        assert main(base + extra) == 0
        outputs.append(json.loads(capsys.readouterr().out)["text"])
    jsonschema.validate(json.loads(outputs[0]), SCHEMAS[1])
    assert re.fullmatch("[0-9]{3}", outputs[1]) and outputs[2] in FIXED
    assert main(base + ["--regex", "a("]) == 2 and "unclosed group" in capsys.readouterr().err


# --- speculative decoding and beams respect the mask --------------------------------------------------

def test_speculative_decoding_respects_the_constraint(engine):
    """Greedy with drafts must equal greedy without (the mask is applied at every verified position);
    sampled drafts stay valid. The n-gram drafter proposes from the prompt, which holds a valid answer."""
    from engine.records import SpeculativeOptions

    ask = 'Repeat exactly: {"name": "Ada", "age": 36} and {"name": "Bob", "age": 7}'
    prompt = tuple(engine.chat_prompt_ids([{"role": "user", "content": ask}]))
    schema = json.dumps(SCHEMAS[0])
    ngram = SpeculativeOptions("ngram", k=4)
    plain, sampled = run_all(engine, [
        GenerationRequest(prompt, constrained("json_schema", schema)),
        GenerationRequest(prompt, constrained("json_schema", schema, temperature=1.0, seed=5), speculative=ngram)])
    forwards = engine.counters[1]
    drafted, = run_all(engine, [GenerationRequest(prompt, constrained("json_schema", schema),
                                                         speculative=ngram)])
    assert drafted.error is None and drafted.results[0].token_ids == plain.results[0].token_ids
    assert engine.counters[1] - forwards < len(drafted.results[0].token_ids)  # drafts were accepted
    for done in (drafted, sampled):
        jsonschema.validate(json.loads(done.results[0].text), SCHEMAS[0])
