"""Commands that make and show vectors: extract, info, demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from emosteer.cli.common import console, load, refuse_overwrite, save_vectors
from emosteer.cli.options import (
    EXTRACT_LIMIT,
    VECTORS,
    EmotionsOpt,
    GenerateOptions,
    ModelOpt,
    OutDirOpt,
    given,
    numbers,
    split_commas,
    with_groups,
)
from emosteer.errors import UnknownEmotionError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.vectors import EmotionVector

DEMO_QUESTIONS = (  # from emotion_query_plus, which extraction never reads
    "eqp-neutral-003", "eqp-joy-007", "eqp-anger-011")
DEMO_EMOTIONS = ("joy", "sadness")  # the two emotions the demo table shows
DEMO_ALPHAS = ("-1", "1", "2")  # away from the emotion, the paper's 1x, stronger
DEMO_TOKENS = 40  # two sentences per answer keep the demo's table readable


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
    context: Annotated[str | None, typer.Option(
        help="own: each response under its own prompt; neutral: re-read the emotional "
             "response under the neutral prompt (default: ExtractConfig.context)")] = None,
    center: Annotated[bool | None, typer.Option(
        help="subtract EV_base (mean of the emotions) from each"
             " (default: ExtractConfig.center)")] = None,
    filter_: Annotated[str | None, typer.Option(
        "--filter", help="none, or judge: average only the answers the judge confirms"
                         " (default: ExtractConfig.filter)")] = None,
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
) -> None:
    """Extract emotion vectors with the paper's method and save them as safetensors.

    Existing files in --out are kept unless --overwrite is given; every file is written
    atomically (a temporary file renamed into place).

    Example: [bold]emosteer extract --emotion joy --emotion anger --limit 40 --out vectors/[/bold]
    """
    from dataclasses import replace

    from emosteer.extraction import ExtractConfig, parse_band
    from emosteer.extraction import extract as run

    base = ExtractConfig()
    more = ({"band": parse_band(band)} if band is not None else {}) | (
        {"train": replace(base.train, steps=train_steps)} if train_steps is not None else {})
    cfg = ExtractConfig(**given(
        emotions=tuple(emotions) if emotions else None, limit=limit, site=site,
        positions=positions, context=context, method=method, center=center, filter=filter_,
        band_width=band_width, scale=scale, norm_fraction=norm_fraction), **more,
        generation=gen.config(base.generation))
    names = [f"{e}.safetensors" for e in (*cfg.emotions, "base")] + ["samples.jsonl"]
    refuse_overwrite(out, names, overwrite)
    m, tok = load(model)
    result = run(m, tok, cfg)
    save_vectors(out, result.vectors, result.samples)
    n = sum(result.used.values())
    console.print(f"extracted {', '.join(result.vectors)} from {n} queries in "
                  f"{result.seconds:.0f} s ({result.seconds / max(n, 1):.2f} s per query) -> "
                  f"{out}/ (responses in {out}/samples.jsonl)")


def info(file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="a vector file (.safetensors)")]) -> None:
    """Show a vector file's metadata and per-layer norms.

    Example: [bold]emosteer info vectors/joy.safetensors[/bold]
    """
    from rich.table import Table

    from emosteer.vectors import EmotionVector

    vec = EmotionVector.load(file)
    table = Table("key", "value", title=str(file))
    for key, value in sorted(vec.meta.items()):
        table.add_row(key, value)
    norms = vec.norms()
    table.add_row("layers", f"{len(norms)} ({vec.layers[0]}..{vec.layers[-1]})")
    table.add_row("norm by layer", " ".join(f"{n:.2f}" for n in norms.values()))
    console.print(table)


def demo(
    model: ModelOpt = "default",
    limit: Annotated[int, typer.Option(min=1, help="extraction queries per emotion")
                     ] = EXTRACT_LIMIT,
    out: Annotated[Path, typer.Option(
        file_okay=False, help="folder for the vectors (files there are replaced)")] = VECTORS,
    emotions: Annotated[list[str] | None, typer.Option(
        "--emotion", "--emotions", callback=split_commas,
        help=f"an emotion shown in the table; repeat for several"
             f" (default: {','.join(DEMO_EMOTIONS)})")
    ] = None,
    alphas: Annotated[list[str] | None, typer.Option(
        "--alpha", "--alphas", callback=split_commas,
        help=f"an alpha shown in the table; repeat for several"
             f" (default: {','.join(DEMO_ALPHAS)})")] = None,
) -> None:
    """Extract all five emotion vectors, then answer unseen questions steered and unsteered.

    Example: [bold]emosteer demo --limit 40[/bold]
    """
    from emosteer.extraction import ExtractConfig
    from emosteer.extraction import extract as run
    from emosteer.steering import check_alpha

    shown = list(emotions or DEMO_EMOTIONS)
    strengths = [check_alpha(a) for a in numbers(alphas or list(DEMO_ALPHAS), "--alpha") or []]
    cfg = ExtractConfig(limit=limit)
    known = (*cfg.emotions, "base")
    unknown = [e for e in shown if e not in known]
    if unknown:
        raise UnknownEmotionError(f"unknown emotion {unknown[0]!r}: choose from "
                                  f"{', '.join(known)}")
    m, tok = load(model)
    result = run(m, tok, cfg)
    save_vectors(out, result.vectors)
    n = sum(result.used.values())
    console.print(f"extracted {len(cfg.emotions)} emotion vectors + base from {n} queries in "
                  f"{result.seconds:.0f} s -> {out}/")
    _demo_table(m, tok, result.vectors, shown, strengths)


def _demo_table(m: PreTrainedModel, tok: PreTrainedTokenizerBase,
                vectors: dict[str, EmotionVector], emotions: list[str],
                alphas: list[float]) -> None:
    from rich.table import Table

    from emosteer import data
    from emosteer.generation import GenerateConfig, generate_text

    by_id = {q.id: q.question for q in data.load_queries("emotion_query_plus")}
    questions = [by_id[i] for i in DEMO_QUESTIONS]
    cfg = GenerateConfig(max_new_tokens=DEMO_TOKENS)
    rows = [("unsteered", generate_text(m, tok, questions, cfg=cfg))]
    for emotion in emotions:
        for a in alphas:
            rows.append((f"{emotion} {a:+g}",
                         generate_text(m, tok, questions, vectors[emotion], a, cfg=cfg)))
    for i, question in enumerate(questions):
        table = Table("steering", "answer", title=f"[bold]{question}[/bold]", show_lines=True)
        for label, answers in rows:
            table.add_row(label, answers[i])
        console.print(table)

