"""Commands that make and show vectors: extract, info (demo: cli/demo.py)."""

from __future__ import annotations

from pathlib import Path
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
from emosteer.cli.engine import EngineOptions, on_device
from emosteer.cli.options import (
    VECTORS,
    EmotionsOpt,
    GenerateOptions,
    ModelOpt,
    OutDirOpt,
    given,
    with_groups,
)
from emosteer.errors import BadInputError


@with_groups
def extract(
    model: ModelOpt = "default",
    emotions: EmotionsOpt = None,
    limit: Annotated[int | None, typer.Option(
        min=1, help="queries per emotion (seeded sample)"
                    " (default: ExtractConfig.limit, all)")] = None,
    out: OutDirOpt = VECTORS,
    overwrite: Annotated[bool, typer.Option(
        help="replace vector files already in --out (refused otherwise)")] = False,
    method: Annotated[str | None, typer.Option(
        help="mean_diff (the paper), pca, or trained (the mean optimised on the same answers)"
             " (default: ExtractConfig.method)")] = None,
    site: Annotated[str | None, typer.Option(
        help="attn (self-attention output, as the authors) or residual (decoder layer "
             "output) (default: ExtractConfig.site)")] = None,
    positions: Annotated[str | None, typer.Option(
        help="response (paper: response tokens) or all (default: ExtractConfig.positions)")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="emotion_query (questions, the emotion asked for in the system prompt) or sev "
             "(SEV discovery scenes, asked for in the reply request)"
             " (default: ExtractConfig.dataset)")] = None,
    describe: Annotated[str | None, typer.Option(
        help="any emotion: a one-line description of the one --emotion names (e.g. --emotion "
             "calm --describe \"calm, composed and reassuring\"); its answers are asked for "
             "with it and filtered by the zero-shot judge")] = None,
    spec: Annotated[Path | None, typer.Option(
        dir_okay=False, help="an emotion specs file (emosteer.emotion_specs): extract its "
                             "emotions (or the --emotion ones)")] = None,
    answers: Annotated[str | None, typer.Option(
        help="generated (the model answers under the emotion prompt, the paper), written (the "
             "answers we wrote, data/written_answers.jsonl, read teacher-forced: no "
             "generation), prefill (the model continues our answer's first sentence) or "
             "fewshot (two of our exchanges before the question) (default: "
             "ExtractConfig.answers)")] = None,
    context: Annotated[str | None, typer.Option(
        help="own: each response under its own prompt; neutral: re-read the emotional "
             "response under the neutral prompt (default: ExtractConfig.context)")] = None,
    center: Annotated[bool | None, typer.Option(
        help="subtract EV_base (mean of the emotions) from each"
             " (default: ExtractConfig.center)")] = None,
    filter_: Annotated[str | None, typer.Option(
        "--filter", help="judge: average only the answers judge A confirms (the recommended "
                         "default, extraction.RECOMMENDED, with --context neutral); none: every "
                         "answer (with --context own: the paper's recipe)")] = None,
    min_confirmed: Annotated[int | None, typer.Option(
        min=0, help="with --filter judge: answer an emotion's questions again while the judge "
                    "has confirmed fewer answers than this (default: "
                    "ExtractConfig.min_confirmed)")] = None,
    rounds: Annotated[int | None, typer.Option(
        min=1, max=100, help="the most times each question is answered, for --min-confirmed "
                             "(default: ExtractConfig.rounds)")] = None,
    band: Annotated[str | None, typer.Option(
        help="layers to keep: first-last (e.g. 8-17), auto (a scan picks --band-width "
             "layers) or all (default: all)")] = None,
    band_width: Annotated[int | None, typer.Option(
        min=1, max=1000, help="layers of an auto band (default: ExtractConfig.band_width)")] = None,
    scale: Annotated[str | None, typer.Option(
        help="raw, norm or spread: strength 1 adds --norm-fraction of each layer's typical "
             "norm (spread) at the site (default: ExtractConfig.scale)")] = None,
    norm_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=10.0, help="see --scale (default: ExtractConfig.norm_fraction)")] = None,
    train_steps: Annotated[int | None, typer.Option(
        min=1, max=100000, help="optimiser steps per emotion for --method trained"
                                " (default: TrainConfig.steps)")] = None,
    gen: GenerateOptions = GenerateOptions(),
    eng: EngineOptions = EngineOptions(),
) -> None:
    """Extract emotion vectors and save them as safetensors: the paper's mean difference over
    the answers the judge confirms, re-read under the neutral prompt (the method search's
    choice; --filter none --context own is the paper's recipe exactly).

    Existing files in --out are kept unless --overwrite is given; every file is written
    atomically (a temporary file renamed into place).

    With --engine vllm the answers are generated by vLLM; the reading stays in transformers.

    Example: [bold]emosteer extract --emotion joy --emotion anger --limit 40 --out vectors/[/bold]
    """
    from dataclasses import replace

    from emosteer.emotions import VECTOR_EMOTIONS
    from emosteer.extraction.bands import parse_band
    from emosteer.extraction.extract import extract as run
    from emosteer.extraction.extract import recommended

    base = recommended()
    more: dict[str, Any] = ({"band": parse_band(band)} if band is not None else {}) | (
        {"train": replace(base.train, steps=train_steps)} if train_steps is not None else {})
    five = (tuple(emotions) if emotions and describe is None and spec is None
            and set(emotions) <= set(VECTOR_EMOTIONS) else None)  # others: _with_specs
    cfg = replace(base, **given(
        emotions=five, limit=limit,
        dataset=None if dataset == "emotion_specs" else dataset, site=site,
        positions=positions, context=context, method=method, center=center, filter=filter_,
        answers=answers,
        min_confirmed=min_confirmed, rounds=rounds, band_width=band_width, scale=scale,
        norm_fraction=norm_fraction), **more,
        generation=gen.config(base.generation))
    cfg = _with_specs(cfg, emotions, describe, spec, dataset)
    names = [f"{e}.safetensors" for e in (*cfg.emotions, "base")] + ["samples.jsonl"]
    eng.check()
    if eng.engine == "vllm" and cfg.answers != "generated":
        raise BadInputError(f"--answers {cfg.answers} begins or replaces the answers itself: "
                            "run it without --engine vllm")
    refuse_overwrite(out, names, overwrite)
    writable_folder(out)
    gens = eng.generations(model, cfg)
    m, tok = load(model)
    result = run(m, tok, cfg, generations=on_device(gens, m))
    save_vectors(out, result.vectors, result.samples)
    n = sum(result.used.values())
    console.print(f"extracted {plain(', '.join(result.vectors))} from {n} queries in "
                  f"{result.seconds:.0f} s ({result.seconds / max(n, 1):.2f} s per query) -> "
                  f"{plain(out)}/ (responses in {plain(out)}/samples.jsonl)")


def info(file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="a vector file (.safetensors)")]) -> None:
    """Show a vector file's metadata and per-layer norms.

    Example: [bold]emosteer info vectors/joy.safetensors[/bold]
    """
    from rich.table import Table

    from emosteer.vectors import EmotionVector

    vec = EmotionVector.load(file)
    table = Table("key", "value", title=plain(file))
    for key, value in sorted(vec.meta.items()):
        table.add_row(plain(key), plain(value))
    norms = vec.norms()
    table.add_row("layers", f"{len(norms)} ({vec.layers[0]}..{vec.layers[-1]})")
    table.add_row("norm by layer", " ".join(f"{n:.2f}" for n in norms.values()))
    console.print(table)


def _with_specs(cfg: Any, emotions: list[str] | None, describe: str | None,
                spec_file: Path | None, dataset: str | None) -> Any:
    """The config for emotions beyond the five: dataset emotion_specs (the spec's prompt, the
    generic questions), a user's own spec from --describe or --spec, the zero-shot judge."""
    from dataclasses import replace

    from emosteer.emotion_specs import EmotionSpec, load_specs
    from emosteer.emotions import VECTOR_EMOTIONS

    own: tuple[EmotionSpec, ...] = ()
    if describe is not None:
        if not emotions or len(emotions) != 1:
            raise BadInputError("--describe describes one emotion: name it with one --emotion "
                                "(e.g. --emotion calm --describe \"calm and reassuring\")")
        own = (EmotionSpec(emotions[0], describe),)
    elif spec_file is not None:
        own = tuple(load_specs(spec_file).values())
    wanted = tuple(emotions) if emotions else tuple(s.name for s in own) or cfg.emotions
    beyond = own or any(e not in VECTOR_EMOTIONS for e in wanted)
    if not beyond and dataset != "emotion_specs":
        return cfg
    if dataset not in (None, "emotion_specs"):
        raise BadInputError(f"--dataset {dataset} has the five basic emotions only: drop it "
                            "for other emotions (they read the specs' generic questions)")
    return replace(cfg, emotions=wanted, dataset="emotion_specs", specs=own,
                   judge="zero-shot" if cfg.filter == "judge" else cfg.judge)

