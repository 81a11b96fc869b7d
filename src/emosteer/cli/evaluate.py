"""Commands that measure: classify, and the experiments on emotion_query_plus."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from emosteer.cli.common import (
    console,
    load,
    plain,
    refuse_overwrite,
    save_vectors,
    writable_folder,
)
from emosteer.cli.engine import EngineOptions
from emosteer.cli.options import (
    AlphaListOpt,
    AutoOptions,
    EmotionsOpt,
    EvalOptions,
    GenerateOptions,
    JudgeOpt,
    VectorSource,
    given,
    numbers,
    split_commas,
    texts,
    with_groups,
)
from emosteer.errors import BadInputError, EmosteerError

MIX_PAIR = ("joy", "sadness")  # the pair `experiment mix` tries when none is named

@dataclass(frozen=True)
class ExperimentOptions(EngineOptions, EvalOptions):
    """What every experiment shares: EvalOptions, the engine, and where the results go.

    Example:
        ExperimentOptions(limit=2).folder("prompting")  # Path("runs/prompting")
    """

    out: Annotated[Path | None, typer.Option(
        file_okay=False, help="folder for the results (default: runs/<experiment>)")] = None

    def folder(self, experiment: str) -> Path:
        """--out, or runs/<experiment> (e.g. runs/alpha-sweep)."""
        return self.out or Path("runs") / experiment


AlphasOpt = Annotated[list[str] | None, typer.Option(
    "--alphas", "--alpha", callback=split_commas,
    help="an alpha; repeat for several (-1,0,1 also works); 'auto' adds the alpha calibrated "
         "on the calibration split (default: EvalConfig.alphas)")]


def _api() -> SimpleNamespace:
    """What this module uses of the experiments layer, imported in this one place (it pulls
    in torch, and it is where a move inside emosteer.evaluate needs an update)."""
    from emosteer.evaluate import experiments
    from emosteer.evaluate.metrics import get_metrics
    from emosteer.evaluate.report import fmt, mean_rows
    from emosteer.evaluate.runner import AutoAlpha, EvalConfig, Runner
    from emosteer.evaluate.scorers import Perplexity
    from emosteer.judges.registry import load_judge

    return SimpleNamespace(experiments=experiments, load_judge=load_judge,
                           get_metrics=get_metrics, fmt=fmt, mean_rows=mean_rows,
                           AutoAlpha=AutoAlpha, EvalConfig=EvalConfig, Runner=Runner,
                           Perplexity=Perplexity)


def _stdin_lines() -> list[str]:
    """The non-blank lines of stdin, decoded as UTF-8 (or one line saying where it is not)."""
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise BadInputError(f"stdin is not valid UTF-8 (byte 0x{raw[err.start]:02x} on line "
                            f"{line}): pass UTF-8 text") from None
    return [line for line in text.splitlines() if line.strip()]


def classify(
    items: Annotated[list[str] | None, typer.Argument(
        metavar="[TEXTS]...", help="texts; none: one per stdin line", callback=texts)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    judge: JudgeOpt = None,
) -> None:
    """Say which emotion each text expresses, with the probability of each label.

    Labels: joy, anger, sadness, fear, disgust, surprise, neutral.

    Example: [bold]emosteer classify "I can't believe they cancelled again!" --json[/bold]
    """
    import json

    lines = list(items or []) or _stdin_lines()
    if not lines:
        raise BadInputError("no text to classify: pass texts as arguments or lines on stdin")
    ratings = _api().load_judge(**given(spec=judge)).rate(lines, lines)
    if as_json:
        for r in ratings:
            print(json.dumps({"label": r.label, "probs": {k: round(v, 4)
                                                          for k, v in r.probs.items()}}))
        return
    from rich.table import Table

    table = Table("text", "label", "probabilities (top 3)")
    for text, r in zip(lines, ratings, strict=True):
        top = sorted(r.probs.items(), key=lambda kv: -kv[1])[:3]
        table.add_row(plain(text), plain(r.label),
                      plain(", ".join(f"{k} {v:.2f}" for k, v in top)))
    console.print(table)


def _alphas(values: list[str] | None) -> tuple[tuple[float, ...] | None, bool]:
    """(the numeric alphas, whether 'auto' was asked for); None: the config's alphas."""
    from emosteer.steering import check_alpha

    if values is None:
        return None, False
    try:
        chosen = tuple(check_alpha(float(a)) for a in values if a != "auto")
    except ValueError:
        raise BadInputError(f"bad --alphas {','.join(values)!r}: write numbers and 'auto', "
                            "e.g. --alpha -1 --alpha 1 --alpha auto (or --alphas=-1,1,auto)"
                            ) from None
    return chosen, "auto" in values


def _runner(ev: ExperimentOptions, gen: GenerateOptions, experiment: str, *,
            emotions: list[str] | tuple[str, ...] | None = None,
            alphas: tuple[float, ...] | None = None, auto: dict[str, Any] | None = None,
            src: VectorSource | None = None) -> Any:
    """The cached Runner of an experiment; every check runs before the model loads, the
    output folders' included (src.vectors when vectors are missing and will be extracted
    there)."""
    ev.check()
    api = _api()
    base = api.EvalConfig()
    api.get_metrics(list(ev.metrics or base.metrics))  # fail on a typo before loading anything
    cfg = api.EvalConfig(**ev.given(), **given(
        emotions=tuple(emotions) if emotions else None, alphas=alphas, seed=gen.seed,
        auto=api.AutoAlpha(**auto) if auto else None), generation=gen.config(base.generation))
    if cfg.judge != base.judge:
        api.load_judge(cfg.judge)  # a bad spec fails before the model loads
    writable_folder(ev.folder(experiment))
    if src is not None and not all((src.vectors / f"{e}.safetensors").is_file()
                                   for e in cfg.emotions):
        writable_folder(src.vectors, "--vectors")
    m, tok = load(ev.model)
    ppl = api.Perplexity(*load(ev.ppl_model)) if ev.ppl_model else None
    return api.Runner(m, tok, cfg, ev.folder(experiment), ppl=ppl)


def _vectors(runner: Any, src: VectorSource, need_base: bool = False) -> dict:
    """The runner's emotions' vectors from `src.vectors`, checked against the runner's model;
    extracted from that same model (and saved there) when any is missing."""
    from emosteer.extraction.extract import ExtractConfig
    from emosteer.extraction.extract import extract as run
    from emosteer.vectors import EmotionVector

    emotions = tuple(runner.cfg.emotions)
    folder = src.vectors
    files = {name: folder / f"{name}.safetensors" for name in (*emotions, "base")}
    wanted = [*emotions, "base"] if need_base else list(emotions)
    if all(files[name].is_file() for name in wanted):
        vectors = {name: EmotionVector.load(f) for name, f in files.items() if f.is_file()}
        for vector in vectors.values():
            vector.check_model(runner.model)  # a vector of another model fails before any answer
        return vectors
    refuse_overwrite(folder, [f.name for f in files.values()], overwrite=False)
    console.print(f"no vectors in {plain(folder)}: extracting {plain(', '.join(emotions))} from "
                  f"{src.extract_limit} emotion_query questions each (never evaluated on)")
    result = run(runner.model, runner.tokenizer,
                 ExtractConfig(emotions=emotions, limit=src.extract_limit))
    save_vectors(folder, result.vectors)
    return dict(result.vectors)


def _finish(result: Any, what: str) -> None:
    from rich.table import Table

    api = _api()
    metrics = [m for m in ("ppl", "topic", "eps", "eas", "tec") if m in result.rows[0]]
    rows = result.rows if what == "mix" else api.mean_rows(result.rows, metrics)
    scope = "per cell" if what == "mix" else "mean over emotions"
    table = Table("row", "target", *metrics, title=f"{what} ({scope})")
    for r in rows:
        table.add_row(plain(f"{r['variant']} {r['label']}"), plain(r["target"]),
                      *[api.fmt(r.get(m), m) for m in metrics])
    console.print(table)
    console.print(plain(f"report: {result.files['html']} (markdown: "
                        f"{result.files['markdown']}, rows: {result.files['summary']})"))


def _resumable(runner: Any, run: Any, *args: Any, **kwargs: Any) -> Any:
    """run(runner, ...), an error saying where the results kept so far are."""
    try:
        return run(runner, *args, **kwargs)
    except EmosteerError as err:
        raise type(err)(f"{err} (answers and scores so far are kept in {runner.out}/; "
                        "rerun the same command to resume)") from err


@with_groups
def alpha_sweep(
    emotions: EmotionsOpt = None,
    alphas: AlphasOpt = None,
    variants: Annotated[list[str] | None, typer.Option(
        "--variant", "--variants", callback=split_commas,
        help="raw (the paper) and/or centered (vector minus EV_base); repeat for both "
             "(default: alpha_sweep's, raw)")] = None,
    prompting: Annotated[bool | None, typer.Option(
        help="add the system-prompt baseline rows (default: alpha_sweep's prompting)")] = None,
    ev: ExperimentOptions = ExperimentOptions(),
    src: VectorSource = VectorSource(),
    auto: AutoOptions = AutoOptions(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Each emotion's vector at alphas -1, 0, 1, 2, 4: PPL, topic, EPS, EAS, TEC per emotion.

    Example: [bold]emosteer experiment alpha-sweep --limit 5 --variant raw --variant centered[/bold]
    """
    chosen, calibrate = _alphas(alphas)
    runner = _runner(ev, gen, "alpha-sweep", emotions=emotions, alphas=chosen,
                     auto=auto.given(), src=src)
    vectors = _vectors(runner, src, need_base="centered" in (variants or ()))
    ev.attach(runner, ev.model, src.vectors)
    result = _resumable(runner, _api().experiments.alpha_sweep, vectors, **given(
        variants=tuple(variants) if variants else None, prompting=prompting), auto=calibrate)
    _finish(result, "alpha-sweep")


@with_groups
def mix(
    pair: Annotated[list[str] | None, typer.Option(
        callback=split_commas, help="two emotions: --pair joy --pair anger (or joy,anger) "
                                    f"(default: {','.join(MIX_PAIR)})")] = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weight", "--weights", callback=split_commas,
        help="a weight tried for each; repeat for several (default: mix_experiment's)")] = None,
    ev: ExperimentOptions = ExperimentOptions(),
    src: VectorSource = VectorSource(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Two emotions mixed over a grid of weights: do their effects add up?

    Example: [bold]emosteer experiment mix --pair joy --pair anger --weights 0,1,2[/bold]
    """
    names = list(pair or MIX_PAIR)
    if len(names) != 2:
        raise BadInputError(f"--pair takes two emotions, e.g. joy,sadness (got "
                            f"{','.join(names)!r})")
    grid = numbers(weights, "--weights")
    if grid is not None and 0.0 not in grid:
        grid = [0.0, *grid]  # the additivity gap needs each emotion alone
    runner = _runner(ev, gen, "mix", emotions=names, src=src)
    vectors = _vectors(runner, src)
    ev.attach(runner, ev.model, src.vectors)
    result = _resumable(runner, _api().experiments.mix_experiment, vectors, names[0],
                        names[1], **given(weights=grid))
    _finish(result, "mix")


@with_groups
def base(
    alphas: AlphaListOpt = None,
    ev: ExperimentOptions = ExperimentOptions(),
    src: VectorSource = VectorSource(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """EV_base (the mean of the emotion vectors) at each alpha: emotion in general, and which.

    Example: [bold]emosteer experiment base --alphas=-1,0,1,2[/bold]
    """
    chosen, calibrate = _alphas(alphas)
    if calibrate:
        raise BadInputError("experiment base takes numbers only: 'auto' is for alpha-sweep")
    runner = _runner(ev, gen, "base", alphas=chosen, src=src)  # EvalConfig's five emotions
    vectors = _vectors(runner, src, need_base=True)
    ev.attach(runner, ev.model, src.vectors)
    _finish(_resumable(runner, _api().experiments.base, vectors), "base")


@with_groups
def prompting(
    emotions: EmotionsOpt = None,
    ev: ExperimentOptions = ExperimentOptions(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """The baseline: the emotion asked for in the system prompt, no vector.

    Example: [bold]emosteer experiment prompting --limit 5[/bold]
    """
    runner = _runner(ev, gen, "prompting", emotions=emotions)
    ev.attach(runner, ev.model, None)
    _finish(_resumable(runner, _api().experiments.prompting), "prompting")
