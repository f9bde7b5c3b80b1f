"""``evolm compare`` as a subprocess on a tiny budget: three files, one row per method."""

import json

TINY = ["--set", "model.width=32", "--set", "model.layers=1", "--set", "model.heads=2", "--set", "model.ff=64",
        "--set", "model.context=32", "--set", "data.batch_size=8", "--set", "data.val_sequences=16",
        "--set", "threads=1", "--set", "strategy.population_size=8", "--set", "fitness.generate_tokens=8",
        "--set", "fitness.prompts=4", "--set", "strategy.pbt_steps=5"]
METHODS = ["es", "ga", "hybrid", "pbt", "adam", "reinforce", "mezo"]


def test_compare_writes_a_row_per_method(tmp_path, cli):
    out = tmp_path / "cmp"
    result = cli("compare", "--methods", ",".join(METHODS), "--budget-tokens", "60000", "--out", str(out), *TINY, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [row["method"] for row in rows] == METHODS
    for row in rows:
        assert "error" not in row, row
        for key in ("val_loss_final", "val_loss_std", "self_score", "distinct_2", "forward_tokens", "wall_seconds", "peak_rss_mb"):
            assert isinstance(row[key], (int, float)), (row["method"], key)
        # A method stops at the end of the first step (generation, PBT ready interval) that reaches the budget.
        assert row["forward_tokens"] <= 60000 * 1.6, row
    table = (out / "compare.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_bad_input(tmp_path, cli):
    result = cli("compare", "--methods", "es,sgd", "--budget-seconds", "5", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "unknown method 'sgd'" in result.stderr
    result = cli("compare", "--methods", "es", "--out", str(tmp_path / "y"))
    assert result.returncode == 2 and "needs a budget" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
