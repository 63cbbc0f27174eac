"""bench --compare's table from a synthetic result (the benchmark itself is never run in tests)."""
from engine.bench.compare import ENGINES, _available, print_table


def test_ratio_table_divides_ours_by_each_engine(capsys):
    result = {"config": {"model": "m.gguf", "runs": 3, "threads": 2, "prompt_tokens": 512, "new_tokens": 128},
              "machine_busy_s": 1.0, "load_average": (0.5, 0.5, 0.5),
              "engines": {"glassbox": {"prefill_tok_s": 400.0, "decode_tok_s": 60.0, "peak_rss": 300 << 20,
                                       "tokens": [1, 2, 3, 4]},
                          "llama.cpp Q4_1": {"prefill_tok_s": 200.0, "decode_tok_s": 80.0, "peak_rss": 200 << 20,
                                             "tokens": [1, 2, 9, 9]}}}
    print_table(result)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| llama.cpp Q4_1"))
    assert "| 2.00x | 0.75x | 1.50x | 2/4 |" in row


def test_engines_that_are_not_installed_are_left_out():
    assert _available("ours")
    assert set(k for k, _ in ENGINES.values()) == {"ours", "llama", "hf"}
