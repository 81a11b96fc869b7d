"""emosteer demo: extract the five emotion vectors, then show each one steering unseen questions,
every answer with the judge's label and probability beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from emosteer.cli.common import console, load, plain, save_vectors, writable_folder
from emosteer.cli.options import EXTRACT_LIMIT, VECTORS, ModelOpt, numbers, split_commas
from emosteer.errors import UnknownEmotionError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.vectors import EmotionVector

DEMO_QUESTIONS = (  # from emotion_query_plus, which extraction never reads
    "eqp-neutral-003", "eqp-joy-007", "eqp-anger-011")
DEMO_ALPHAS = ("1",)  # calibrated vectors: alpha 1 is the recommended strength of each emotion
DEMO_TOKENS = 40  # two sentences per answer keep the demo's table readable


def demo(
    model: ModelOpt = "default",
    limit: Annotated[int, typer.Option(min=1, help="extraction queries per emotion")
                     ] = EXTRACT_LIMIT,
    out: Annotated[Path, typer.Option(
        file_okay=False, help="folder for the vectors (files there are replaced)")] = VECTORS,
    emotions: Annotated[list[str] | None, typer.Option(
        "--emotion", "--emotions", callback=split_commas,
        help="an emotion shown in the table; repeat for several (default: all five)")
    ] = None,
    alphas: Annotated[list[str] | None, typer.Option(
        "--alpha", "--alphas", callback=split_commas,
        help=f"an alpha shown in the table; repeat for several"
             f" (default: {','.join(DEMO_ALPHAS)})")] = None,
) -> None:
    """Extract all five emotion vectors with the default method, then answer unseen questions
    steered by each, with the judge's reading of every answer.

    On the bundled model the fresh vectors take the calibration of the shipped ones (same
    model, same method), so alpha 1 is each emotion's recommended strength.

    Example: [bold]emosteer demo --limit 40[/bold]
    """
    from emosteer.extraction.extract import extract, recommended
    from emosteer.steering import check_alpha
    from emosteer.vectors import calibrated_like, shipped_vectors

    cfg = recommended(limit=limit)
    shown = list(emotions or cfg.emotions)
    strengths = [check_alpha(a) for a in numbers(alphas or list(DEMO_ALPHAS), "--alpha") or []]
    unknown = [e for e in shown if e not in (*cfg.emotions, "base")]
    if unknown:
        raise UnknownEmotionError(f"unknown emotion {unknown[0]!r}: choose from "
                                  f"{', '.join((*cfg.emotions, 'base'))}")
    writable_folder(out)
    m, tok = load(model)
    result = extract(m, tok, cfg)
    shipped = shipped_vectors()
    same_model = shipped and next(iter(shipped.values())).meta.get("model_id") == \
        result.vectors[cfg.emotions[0]].meta.get("model_id")
    vectors = calibrated_like(result.vectors, shipped) if same_model else result.vectors
    save_vectors(out, vectors)
    n = sum(result.used.values())
    how = ("calibrated like the shipped vectors: alpha 1 = each emotion's recommended strength"
           if same_model else "not calibrated for this model: alpha 1 = the raw method output")
    console.print(f"extracted {len(cfg.emotions)} emotion vectors + base ({cfg.method}, judge-"
                  f"filtered by {cfg.judge}) from "
                  f"{n} queries in {result.seconds:.0f} s -> {plain(out)}/ ({how})")
    demo_table(m, tok, vectors, shown, strengths)


def demo_table(m: PreTrainedModel, tok: PreTrainedTokenizerBase,
               vectors: dict[str, EmotionVector], emotions: list[str],
               alphas: list[float]) -> None:
    """One table per question: unsteered, then each emotion at each alpha, with the embedded
    judge's label and probability of every answer."""
    from rich.table import Table

    from emosteer import data
    from emosteer.generation import GenerateConfig, generate_text
    from emosteer.judges.registry import load_judge

    by_id = {q.id: q.question for q in data.load_queries("emotion_query_plus")}
    questions = [by_id[i] for i in DEMO_QUESTIONS]
    cfg = GenerateConfig(max_new_tokens=DEMO_TOKENS)
    rows: list[tuple[str, str | None, list[str]]] = [
        ("unsteered", None, generate_text(m, tok, questions, cfg=cfg))]
    for emotion in emotions:
        for a in alphas:
            rows.append((f"{emotion} {a:+g}", emotion,
                         generate_text(m, tok, questions, vectors[emotion], a, cfg=cfg)))
    judge = load_judge("embedded")
    ratings = [judge.rate(questions, answers) for _, _, answers in rows]
    for i, question in enumerate(questions):
        table = Table("steering", "answer", "judge", title=f"[bold]{plain(question)}[/bold]",
                      show_lines=True)
        for (label, target, answers), rated in zip(rows, ratings, strict=True):
            r = rated[i]
            hit = target is not None and r.label == target
            verdict = plain(f"{r.label} {r.probs[r.label]:.2f}")
            table.add_row(plain(label), plain(answers[i]),
                          f"[green]{verdict}[/green]" if hit else verdict)
        console.print(table)
    console.print("[dim]judge: the embedded emotion classifier (86% on held-out sentences); "
                  "green = the steered emotion[/dim]")
