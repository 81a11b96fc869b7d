"""Measurement with a second opinion: a Runner rated by several judges, and one condition's
scores on a set of questions with standard errors.

EPS and TEC are reported per judge; the PPL ratio to the unsteered answers is the exponential
of the mean per-question difference of log perplexity (the same questions answered both
ways), so its standard error comes from those paired differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emosteer.data import Query
from emosteer.evaluate.conditions import Condition
from emosteer.evaluate.metrics import METRICS
from emosteer.evaluate.runner import EvalConfig, Runner, Score
from emosteer.judges.rating import Judge

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class JudgesRunner(Runner):
    """A Runner whose answers are also rated by more judges (cached like the first one).

    Args:
        model, tokenizer, cfg, out: as Runner (cfg.judge is the first judge).
        more_judges: the specs of the other judges; their annotations are "judge:<spec>".
        judges: spec -> judge to use instead of loading the spec (tests pass fakes).
        kwargs: the other Runner arguments (progress, judge, ppl, topic).

    Example:
        runner = JudgesRunner(model, tok, EvalConfig(judge="embedded-a"), "runs/frontier",
                              ["embedded-b"])
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 cfg: EvalConfig, out: str | Path, more_judges: Sequence[str] = (),
                 judges: Mapping[str, Judge] | None = None, **kwargs: Any):
        super().__init__(model, tokenizer, cfg, out, **kwargs)
        self.more_judges = tuple(more_judges)
        self._more = dict(judges or {})

    def other_judge(self, spec: str) -> Judge:
        """The judge of one of `more_judges` (loaded on first use)."""
        if spec not in self._more:
            from emosteer.judges.registry import load_judge

            self._more[spec] = load_judge(spec)
        return self._more[spec]

    def judge_names(self) -> dict[str, str]:
        """judge spec -> the annotation its ratings are stored under."""
        return {self.judge_spec: "judge", **{s: f"judge:{s}" for s in self.more_judges}}

    def scorers(self) -> list[tuple[str, str, Score]]:
        """The Runner's scorers, then one per other judge."""
        out = super().scorers()
        for spec in self.more_judges:
            j = self.other_judge(spec)
            out.append((f"judge:{spec}", f"judge:{j.spec}:{j.version}", _rater(j)))
        return out


def _rater(judge: Judge) -> Score:
    def score(questions: list[str], answers: list[str]) -> list:
        return [r.to_json() for r in judge.rate(questions, answers)]

    return score


def _se(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def log_ppls(runner: Runner, condition: Condition, queries: Sequence[Query]) -> list[float | None]:
    """Per question, the log perplexity of the condition's answer (None for an empty one)."""
    out: list[float | None] = []
    for q in queries:
        ppl = runner.annotations_of(runner.gen_key(condition, q)).get("ppl") or {}
        out.append(ppl["nll"] / ppl["tokens"] if ppl.get("tokens") else None)
    return out


def measure(runner: JudgesRunner, condition: Condition, target: str, queries: Sequence[Query],
            baseline: Sequence[float | None]) -> dict:
    """One condition on `queries`: EPS and TEC per judge (and their SE), the mean EPS of the
    judges, the PPL ratio to `baseline` (per-question log-PPL differences) and topic.

    Args:
        runner: the runner whose caches hold the answers and annotations.
        condition: what is measured (answered and annotated already).
        target: the emotion scored.
        queries: the questions (calibration or held out).
        baseline: log_ppls of the unsteered answers to the same questions.

    Example:
        row = measure(runner, condition, "joy", queries, log_ppls(runner, plain, queries))
        row["eps:embedded-b"], row["ppl_ratio"], row["ppl_ratio_se"]
    """
    annotated = [runner.annotations_of(runner.gen_key(condition, q)) for q in queries]
    row: dict = {"n": len(queries)}
    eps_means = []
    for spec, name in runner.judge_names().items():
        judged = [a[name] for a in annotated if a.get(name) is not None]
        eps = [v for j in judged if (v := METRICS["eps"].value(j, target)) is not None]
        tec = [v for j in judged if (v := METRICS["tec"].value(j, target)) is not None]
        row[f"eps:{spec}"], row[f"eps_se:{spec}"] = _mean(eps), _se(eps)
        row[f"tec:{spec}"] = _mean(tec)
        eps_means.append(row[f"eps:{spec}"])
    row["eps"] = None if None in eps_means else statistics.fmean(eps_means)
    diffs = [x - y for x, y in zip(log_ppls(runner, condition, queries), baseline,
                                   strict=True) if x is not None and y is not None]
    ratio_se = _se(diffs)
    row["ppl_ratio"] = math.exp(statistics.fmean(diffs)) if diffs else None
    row["ppl_ratio_se"] = (row["ppl_ratio"] * ratio_se if ratio_se is not None
                           and row["ppl_ratio"] is not None else None)
    topics = [a["topic"] for a in annotated if a.get("topic") is not None]
    row["topic"], row["topic_se"] = _mean(topics), _se(topics)
    row["repetition"] = _mean([repeated_trigrams(t) for t in runner.answers(condition, queries)])
    return row


def repeated_trigrams(text: str) -> float:
    """The share of an answer's word trigrams that already occurred in it (0: no loop).

    Example:
        repeated_trigrams("I am sad. I am sad. I am sad.")  # 0.57
    """
    words = text.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
