"""The cached runner: answers conditions x questions, annotates them, summarises the metrics.

Answers are generated in batches, several conditions per forward pass (steer_rows), and
cached in JSONL per (model, scaled-vector hash, system prompt, question, generation
settings); annotations (judge, perplexity, topic) are cached per answer and scorer version.
Rerunning the same command resumes; changing a setting only computes what is new.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from emosteer.data import Query
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.evaluate.conditions import Condition
from emosteer.evaluate.metrics import get_metrics
from emosteer.evaluate.store import JsonlStore, digest
from emosteer.generation import GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.judges.rating import Judge
from emosteer.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.evaluate.scorers import Perplexity, TopicSimilarity
    from emosteer.vectors import EmotionVector

Topic = Literal["embedding", "judge"]
Score = Callable[[list[str], list[str]], list]  # (questions, answers) -> one value per answer


class Answerer(Protocol):
    """Another engine for the runner's answers (emosteer.vllm.generate.VllmAnswerer)."""

    name: str  # joins every cache key, so its answers never pass for transformers' ones
    batch_size: int  # answers per call

    def answer(self, questions: Sequence[str], systems: Sequence[str | None],
               rows: Sequence[EmotionVector | None], cfg: GenerateConfig) -> list[str]:
        """One answer per question, row i steered by rows[i] (alpha applied; None: not)."""
        ...


@dataclass(frozen=True)
class AutoAlpha:
    """How `--alpha auto` picks an alpha per emotion on the calibration split.

    Example:
        AutoAlpha(candidates=(1.0, 2.0, 3.0), target_eps=0.6)
    """

    candidates: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # the paper's range, finer
    target_eps: float = 0.5  # "most answers show the emotion"
    max_ppl_ratio: float = 1.5  # fluency bound: PPL at most 1.5x the unsteered PPL
    limit: int = 4  # calibration questions per EQ+ category (from the calibration split)


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of an experiment, with the reason for each default.

    Example:
        EvalConfig(limit=5, alphas=(0.0, 1.0, 2.0), metrics=("ppl", "eps"))
    """

    emotions: tuple[str, ...] = VECTOR_EMOTIONS  # the paper's five
    alphas: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0, 4.0)  # the paper's sweep
    limit: int | None = 5  # questions per EQ+ category (5 emotions + neutral), seeded sample
    metrics: tuple[str, ...] = ("ppl", "topic", "eps", "eas", "tec")  # the paper's five
    judge: str = "embedded"  # offline MiniLM judge; "hf:facebook/bart-large-mnli" = paper's EPS
    topic: Topic = "embedding"  # MiniLM similarity, calibrated; "judge": the LLM judge rates it
    calibration_share: float = 0.2  # EQ+ questions set aside for --alpha auto, never reported
    seed: int = 0  # the question sample and the sampling seed
    generation: GenerateConfig = field(
        default_factory=lambda: GenerateConfig(max_new_tokens=48, batch_size=16))
    auto: AutoAlpha = field(default_factory=AutoAlpha)


class Runner:
    """Generates, annotates and summarises conditions x questions, with caches in `out`.

    Args:
        model: the model that answers (and, unless `ppl` is given, scores perplexity).
        tokenizer: its tokenizer.
        cfg: the experiment's settings.
        out: the folder for caches and reports.
        progress: show progress bars.
        judge: a judge to use instead of loading `cfg.judge`.
        ppl: a perplexity scorer to use instead of one on `model`.
        topic: a topic scorer to use instead of the MiniLM one.
        engine: generate the answers there instead of with transformers `generate` (the
            model still scores perplexity); its name joins the cache keys.

    Example:
        runner = Runner(model, tok, EvalConfig(limit=2), "runs/demo")
        rows = runner.run([unsteered(["joy"])], evaluation_queries(2))
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 cfg: EvalConfig, out: str | Path, progress: bool = True,
                 judge: Judge | None = None, ppl: Perplexity | None = None,
                 topic: TopicSimilarity | None = None, engine: Answerer | None = None):
        from emosteer.models import model_id

        if cfg.topic not in ("embedding", "judge"):
            raise BadInputError(f"topic={cfg.topic!r}: use 'embedding' or 'judge'")
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.out = Path(out)
        self.progress = progress
        self.model_id = model_id(model)
        self.generations = JsonlStore(self.out / "generations.jsonl")
        self.annotations = JsonlStore(self.out / "annotations.jsonl", ("key", "scorer"))
        self.metrics = get_metrics(cfg.metrics)
        self._judge, self._ppl, self._topic = judge, ppl, topic
        self.engine = engine
        self.timings: dict[str, float] = {}

    # scorers are built on first use, so a run with cached annotations loads none of them
    @property
    def judge(self) -> Judge:
        """The judge (loaded from cfg.judge on first use)."""
        if self._judge is None:
            from emosteer.judges.registry import load_judge

            self._judge = load_judge(self.cfg.judge)
        return self._judge

    @property
    def judge_spec(self) -> str:
        """The judge's spec, without loading it when it is not loaded yet."""
        return self._judge.spec if self._judge is not None else self.cfg.judge

    @property
    def ppl(self) -> Perplexity:
        """The perplexity scorer (the unsteered model itself by default)."""
        if self._ppl is None:
            from emosteer.evaluate.scorers import Perplexity

            self._ppl = Perplexity(self.model, self.tokenizer)
        return self._ppl

    @property
    def topic(self) -> TopicSimilarity:
        """The topic scorer (MiniLM similarity, calibrated)."""
        if self._topic is None:
            from emosteer.evaluate.scorers import TopicSimilarity

            self._topic = TopicSimilarity()
        return self._topic

    def needs(self, annotation: str) -> bool:
        """True when a chosen metric reads this annotation ("judge", "topic" or "ppl")."""
        return any(m.needs == annotation for m in self.metrics)

    def gen_key(self, condition: Condition, query: Query) -> str:
        """The cache key of one answer: model, what is added, question, generation settings."""
        g = asdict(self.cfg.generation)
        g.pop("batch_size")  # how answers are batched doesn't name them
        engine = {"engine": self.engine.name} if self.engine is not None else {}
        return digest({"model": self.model_id, **condition.key(), "query": query.id,
                       "question": query.question, "generation": g, **engine})

    # --- generation ---
    def generate(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> None:
        """Answer every (condition, question) not in the cache yet, in batches."""
        items = [(c, q, self.gen_key(c, q)) for c in conditions for q in queries]
        missing = [item for item in {key: (c, q, key) for c, q, key in items}.values()
                   if item[2] not in self.generations]  # a cached answer is never redone
        size = self.engine.batch_size if self.engine else self.cfg.generation.batch_size
        # a batch steers at one site (steer_rows): attn and residual rows go in separate
        # batches; unsteered rows go with the first site's
        groups: dict[str, list] = {}
        for item in missing:
            added = item[0].steering()
            groups.setdefault(added.site if added is not None else "", []).append(item)
        plain = groups.pop("", [])
        first = sorted(groups)[0] if groups else ""
        groups[first] = plain + groups.get(first, [])
        todo = [g[i:i + size] for _, g in sorted(groups.items())
                for i in range(0, len(g), size)]
        start = time.perf_counter()
        with progress_bar(self.progress, "generating", sum(len(b) for b in todo)) as advance:
            for batch in todo:
                self._generate_batch(batch)
                advance(len(batch))
        self._time("generate_s", start)
        self.timings["answers_generated"] = (self.timings.get("answers_generated", 0)
                                             + sum(len(b) for b in todo))

    def _generate_batch(self, batch: list[tuple[Condition, Query, str]]) -> None:
        from emosteer.steering import steer_rows

        cfg = self.cfg.generation
        rows = [c.steering() for c, _, _ in batch]
        positions = [c.positions for c, _, _ in batch]
        t0 = time.perf_counter()
        if self.engine is not None:
            if any(p != "all" for p in positions) or any(c.preserve_norm for c, _, _ in batch):
                raise BadInputError("steering generated positions only, or keeping norms, needs "
                                    "the built-in generation: run without the vLLM engine")
            texts = self.engine.answer([q.question for _, q, _ in batch],
                                       [c.system for c, _, _ in batch], rows, cfg)
        else:
            prompts = [chat_prompt(self.tokenizer, q.question, c.system) for c, q, _ in batch]
            torch.manual_seed(int(digest([key for _, _, key in batch])[:8], 16) ^ cfg.seed)
            with steer_rows(self.model, rows, positions=positions,
                            preserve_norm=[c.preserve_norm for c, _, _ in batch]):
                out = generate(self.model, self.tokenizer, prompts, cfg)
            texts = decode_responses(self.tokenizer, out)
        seconds = (time.perf_counter() - t0) / len(batch)
        self.generations.add(
            {"key": key, "model": self.model_id, "condition": c.describe(), "query": q.id,
             "category": q.emotion, "question": q.question, "answer": text,
             "seconds": round(seconds, 3)}
            for (c, q, key), text in zip(batch, texts, strict=True))

    def _time(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0) + time.perf_counter() - start

    # --- annotation ---
    def scorers(self) -> list[tuple[str, str, Score]]:
        """(annotation name, scorer version, score(questions, answers)) for needed metrics.

        With topic "judge", topic is read from the judge's own rating: one request per answer.
        """
        topic_from_judge = self.needs("topic") and self.cfg.topic == "judge"
        if topic_from_judge and not self.judge.rates_topic:
            raise BadInputError(f"judge {self.cfg.judge} does not rate topic: use --topic "
                                "embedding or an openai: judge")
        out: list[tuple[str, str, Score]] = []
        if self.needs("judge") or topic_from_judge:
            j = self.judge
            out.append(("judge", f"judge:{j.spec}:{j.version}",
                        lambda qs, As: [r.to_json() for r in j.rate(qs, As)]))
        if self.needs("topic") and not topic_from_judge:
            t = self.topic
            out.append(("topic", t.version, t.score))
        if self.needs("ppl"):
            p = self.ppl
            out.append(("ppl", p.version, p.score))
        return out

    def annotate(self, keys: Sequence[str], batch_size: int = 32) -> None:
        """Score every cached answer of `keys` that a needed scorer has not scored yet."""
        keys = list(dict.fromkeys(keys))
        for name, version, score in self.scorers():
            missing = [k for k in keys if (k, version) not in self.annotations]
            start = time.perf_counter()
            shown = self.progress and bool(missing)
            with progress_bar(shown, f"scoring {name}", len(missing)) as adv:
                for i in range(0, len(missing), batch_size):
                    chunk = [self._generated(k) for k in missing[i:i + batch_size]]
                    values = score([r["question"] for r in chunk], [r["answer"] for r in chunk])
                    self.annotations.add({"key": r["key"], "scorer": version, "name": name,
                                          "value": v} for r, v in zip(chunk, values, strict=True))
                    adv(len(chunk))
            self._time(f"score_{name}_s", start)

    def annotations_of(self, key: str) -> dict:
        """annotation name -> cached value (None when not scored) for one answer."""
        values = {name: (self.annotations.get(key, version) or {}).get("value")
                  for name, version, _ in self.scorers()}
        judged = values.get("judge")
        if self.cfg.topic == "judge" and judged is not None:
            values["topic"] = judged.get("topic")
        return values

    # --- summary ---
    def run(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> list[dict]:
        """Generate, annotate and summarise: one row per condition and target."""
        self.generate(conditions, queries)
        self.annotate([self.gen_key(c, q) for c in conditions for q in queries])
        return self.summarise(conditions, queries)

    def summarise(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> list[dict]:
        """One row per condition and target: the condition, n and one value per metric."""
        rows = []
        for c in conditions:
            annotated = [self.annotations_of(self.gen_key(c, q)) for q in queries]
            for target in c.targets:
                row = {**c.describe(), "target": target, "n": len(queries)}
                for m in self.metrics:
                    row[m.name] = m(annotated, target)
                rows.append(row)
        return rows

    def answers(self, condition: Condition, queries: Sequence[Query]) -> list[str]:
        """The cached answers of one condition, in the order of `queries`."""
        return [self._generated(self.gen_key(condition, q))["answer"] for q in queries]

    def _generated(self, key: str) -> dict:
        record = self.generations.get(key)
        if record is None:
            raise KeyError(f"no answer {key} in {self.generations.path}: generate() it first")
        return record

    def record(self, condition: Condition, query: Query) -> dict | None:
        """The cached generation record of one answer, or None when it was not generated."""
        return self.generations.get(self.gen_key(condition, query))
