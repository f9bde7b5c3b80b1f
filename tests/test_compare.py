"""``evolm compare`` as a subprocess on a tiny budget: three files, one row per method, one judge for all."""

import json

import torch
import torch.nn.functional as F

TINY = [
    "--set",
    "model.width=32",
    "--set",
    "model.layers=1",
    "--set",
    "model.heads=2",
    "--set",
    "model.ff=64",
    "--set",
    "model.context=32",
    "--set",
    "data.batch_size=8",
    "--set",
    "data.val_sequences=16",
    "--set",
    "threads=1",
    "--set",
    "strategy.population_size=8",
    "--set",
    "fitness.generate_tokens=8",
    "--set",
    "fitness.prompts=4",
    "--set",
    "strategy.pbt_steps=5",
]
METHODS = ["es", "ga", "hybrid", "pbt", "adam", "reinforce", "mezo"]


def test_compare_writes_a_row_per_method(tmp_path, cli):
    out = tmp_path / "cmp"
    result = cli(
        "compare", "--methods", ",".join(METHODS), "--budget-tokens", "60000", "--out", str(out), *TINY, timeout=600
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [row["method"] for row in rows] == METHODS
    for row in rows:
        assert "error" not in row, row
        for key in (
            "val_loss_final",
            "val_loss_std",
            "reference_score",
            "reference_score_std",
            "self_score",
            "distinct_2",
            "forward_tokens",
            "wall_seconds",
            "peak_rss_mb",
        ):
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


# Context 64 holds a 16-token prompt and its 32 new tokens, so the judge's numbers can be recomputed
# below with one plain forward pass (no window to cut, no cache to rebuild).
JUDGED = [
    "model.width=32",
    "model.layers=1",
    "model.heads=2",
    "model.ff=64",
    "model.context=64",
    "data.batch_size=8",
    "data.val_sequences=16",
    "threads=1",
    "strategy.population_size=8",
]


def judged_by_hand(final, initial, corpus):
    """The final model's continuations of 8 evenly spaced validation prompts (16 tokens, 32 new, temperature 1,
    seed derive_seed(0, "fitness-report")): (initial model's mean log-likelihood, final model's own, distinct-2)."""
    from evolm.seeding import derive_seed

    starts = torch.linspace(0, len(corpus.val) - 16, 8).long()
    prompts = corpus.val[starts.unsqueeze(1) + torch.arange(16)]
    new = final.generate(prompts, 32, 1.0, torch.Generator().manual_seed(derive_seed(0, "fitness-report")))
    sequence = torch.cat([prompts, new], dim=1)
    with torch.no_grad():
        scores = [
            F.log_softmax(model(sequence[:, :-1]).float(), dim=-1)[:, 15:].gather(-1, new.unsqueeze(-1)).mean().item()
            for model in (initial, final)
        ]
    bigrams = [tuple(row[i : i + 2]) for row in new.tolist() for i in range(len(row) - 1)]
    return scores[0], scores[1], len(set(bigrams)) / len(bigrams)


def test_compare_judges_every_method_with_the_frozen_initial_model(tmp_path, cli):
    """reference_score is the frozen initial model's score of each method's final continuations, the same
    judge for evolution and baselines (recomputed here by hand); self_score is the final model's own."""
    from safetensors.torch import load_file

    from evolm.config import build_config
    from evolm.data import Corpus
    from evolm.models import build_model

    out = tmp_path / "cmp"
    settings = [arg for item in JUDGED for arg in ("--set", item)]
    result = cli(
        "compare", "--methods", "es,adam", "--budget-tokens", "20000", "--out", str(out), *settings, timeout=600
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "compare.json").read_text())
    config = build_config(overrides=[tuple(item.split("=")) for item in JUDGED])
    corpus = Corpus.load(None, config.model.context, config.data.val_fraction)
    initial = build_model(config.model, 0).eval()  # every method's start at seed 0
    # The initial model judging its own text: where every method starts.
    start, own_start, distinct_start = judged_by_hand(initial, initial, corpus)
    assert start == own_start
    assert abs(document["judge"]["initial"]["reference_score"] - start) < 1e-4
    assert abs(document["judge"]["initial"]["distinct_2"] - distinct_start) < 1e-9
    rows = {row["method"]: row for row in document["rows"]}
    assert set(rows) == {"es", "adam"}
    for method, row in rows.items():
        final = build_model(config.model, 0)
        final.load_state_dict(load_file(str(out / f"{method}-seed0" / "model.safetensors")))
        reference, own, distinct = judged_by_hand(final.eval(), initial, corpus)
        assert abs(row["reference_score"] - reference) < 1e-4, (method, row, reference)
        assert abs(row["self_score"] - own) < 1e-4, (method, row, own)
        assert abs(row["distinct_2"] - distinct) < 1e-9, (method, row, distinct)
        assert row["reference_score_std"] == 0.0  # one seed
    # Adam moved the weights, so the two judges disagree: the columns measure different things.
    assert rows["adam"]["val_loss_final"] < 5.0
    assert abs(rows["adam"]["reference_score"] - rows["adam"]["self_score"]) > 1e-3
    table = (out / "compare.md").read_text()
    assert "| method | val loss | reference score (frozen initial model) | own score (model judges itself) |" in table
    assert "under the frozen initial model" in table
    assert set(document["columns"]) >= {"reference_score", "self_score", "distinct_2"}
    # Where and how it ran, as every benchmark result records it.
    assert document["command"].startswith("evolm compare --methods es,adam --budget-tokens 20000")
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch"]
