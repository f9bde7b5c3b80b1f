"""The ``fitness`` config section read and checked: the terms and their weights, how many objectives
they make, and the one-line errors for settings a run cannot use (:mod:`evolm.fitness` scores them)."""

from __future__ import annotations

import math

from evolm.errors import UsageError

TERMS = ("likelihood", "self", "diversity", "margin", "novelty")
GENERATION_TERMS = ("self", "diversity", "margin", "novelty")  # terms that need the candidate's own continuations
SCORERS = ("self", "reference")


def parse_terms(text: str) -> list[tuple[str, float]]:
    """``"likelihood=1,self=0.5"`` -> ``[("likelihood", 1.0), ("self", 0.5)]``; a bare name weighs 1.

    Weights are non-negative numbers (every term is already higher-is-better); 0 turns a term off.
    """
    example = "e.g. likelihood=1,self=0.5,diversity=0.2"
    if not text or not text.strip():
        raise UsageError(f"config field fitness.terms is empty ({example})")
    terms: list[tuple[str, float]] = []
    for item in text.split(","):
        name, has_weight, weight_text = (part.strip() for part in item.partition("="))
        if not name:
            raise UsageError(f"config field fitness.terms: empty term in {text!r} ({example})")
        if name not in TERMS:
            raise UsageError(f"config field fitness.terms: unknown term {name!r} (choose from {', '.join(TERMS)})")
        if any(name == seen for seen, _ in terms):
            raise UsageError(f"config field fitness.terms: term {name!r} appears twice in {text!r}")
        try:
            weight = float(weight_text) if has_weight else 1.0
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise UsageError(
                f"config field fitness.terms: weight of {name!r} must be a non-negative number, got {weight_text!r}"
            )
        terms.append((name, weight))
    if not any(weight > 0 for _, weight in terms):
        raise UsageError(f"config field fitness.terms: every weight in {text!r} is 0; at least one term must count")
    return terms


def objective_count(config) -> int:
    """Objectives a run's fitness returns: one per term of non-zero weight for nsga2, else one (the weighted sum)."""
    if config.strategy.name != "nsga2" or config.task.name or config.task.reward:
        return 1  # a task's fitness is one value (its reward, normalised per prompt)
    return sum(1 for _, weight in parse_terms(config.fitness.terms) if weight > 0)


def validate_fitness_config(config) -> None:
    """Raise UsageError (one line naming the field) for a fitness section this build cannot use."""
    fitness = config.fitness
    terms = parse_terms(fitness.terms)
    for key in ("prompts", "prompt_tokens", "generate_tokens"):
        if getattr(fitness, key) <= 0:
            raise UsageError(f"config field fitness.{key} must be positive, got {getattr(fitness, key)}")
    if not (math.isfinite(fitness.temperature) and fitness.temperature >= 0):
        raise UsageError(f"config field fitness.temperature must be 0 (greedy) or positive, got {fitness.temperature}")
    if fitness.scorer not in SCORERS:
        raise UsageError(
            f"config field fitness.scorer: unknown scorer {fitness.scorer!r} (choose from {', '.join(SCORERS)})"
        )
    if not math.isfinite(fitness.margin):
        raise UsageError(f"config field fitness.margin must be a finite number, got {fitness.margin}")
    if any(name == "novelty" and weight > 0 for name, weight in terms) and config.strategy.name == "pbt":
        raise UsageError(
            "config field fitness.terms: the novelty term needs a population scored together, "
            "and pbt scores its members one by one; drop novelty or choose es, ga, nsga2 or cmaes"
        )
