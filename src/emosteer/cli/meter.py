"""The meter command: a text's tokens coloured by their dominant emotion, a sparkline per emotion.

`render` is shared with `emosteer generate --meter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from emosteer.cli.common import clean, console, load, plain
from emosteer.cli.options import EmotionsOpt, ModelOpt, texts, utf8
from emosteer.errors import UnknownEmotionError

if TYPE_CHECKING:
    from rich.console import Group

    from emosteer.emotion_meter.meter import Readings

COLOURS = {"joy": "yellow", "anger": "red", "sadness": "blue", "fear": "magenta",
           "disgust": "green", "surprise": "cyan"}
BARS = "▁▂▃▄▅▆▇█"
FLOOR = 0.5  # a token is coloured when its highest reading reaches this
WIDTH = 60  # sparkline characters at most: longer texts are averaged into this many bins

MeterFileOpt = Annotated[Path | None, typer.Option(
    "--meter-file", exists=True, dir_okay=False,
    help="a meter JSON from `emosteer fit-meter` (default: the one shipped for the model)")]


def sparkline(values: Sequence[float], width: int = WIDTH) -> str:
    """0-1 values as block characters, averaged into at most `width` bins.

    Example:
        >>> sparkline([0.0, 0.5, 1.0])
        '▁▅█'
    """
    if len(values) > width:
        step = len(values) / width
        values = [sum(part) / len(part) for part in
                  (values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]
                   for i in range(width))]
    top = len(BARS) - 1
    return "".join(BARS[min(top, max(0, round(v * top)))] for v in values)


def render(readings: Readings, title: str | None = None) -> Group:
    """The text with each token coloured by its dominant emotion, a legend, and per emotion
    a sparkline over the tokens with the text-level mean."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    text = Text()
    for token, emotion in zip(readings.tokens, readings.dominant(FLOOR), strict=True):
        text.append(clean(token), style=f"bold {COLOURS.get(emotion, 'white')}" if emotion else "")
    legend = Text("colour: the emotion reading highest on the token, when it reaches "
                  f"{FLOOR:g}; ", style="dim")
    for emotion in readings.emotions:
        legend.append(f"{clean(emotion)} ", style=COLOURS.get(emotion, "white"))
    table = Table(box=None, show_header=False, padding=(0, 1))
    means = readings.mean()
    for i, emotion in enumerate(readings.emotions):
        column = [float(v) for v in readings.values[:, i]]
        table.add_row(Text(clean(emotion), style=COLOURS.get(emotion, "white")),
                      Text(sparkline(column), style=COLOURS.get(emotion, "white")),
                      f"mean {means[emotion]:.2f}", f"max {max(column, default=0.0):.2f}")
    parts = [Text(clean(title), style="bold")] if title else []
    note = ([Text(f"mean: over the tokens after the first {readings.warmup}, "
                  "read before the model had read enough to tell", style="dim")]
            if 0 < readings.warmup < len(readings.tokens) else [])
    return Group(*parts, text, legend, table, *note)


def meter(
    text: Annotated[list[str], typer.Argument(help="the text to read", callback=texts)],
    model: ModelOpt = "default",
    meter_file: MeterFileOpt = None,
    question: Annotated[str | None, typer.Option(
        callback=utf8, help="read the text as the assistant's answer to this question")] = None,
) -> None:
    """Read a text with the emotion meter: per token, a 0-1 reading per emotion.

    Example: [bold]emosteer meter "I can't stop smiling, we won the final!"[/bold]

    As an answer: [bold]emosteer meter "It was awful." --question "How was the trip?"[/bold]
    """
    from emosteer.emotion_meter.meter import load_meter
    from emosteer.emotion_meter.read import read_texts, sequence
    from emosteer.generation import check_context

    m, tok = load(model)
    items: list = [t if question is None else
                   [{"role": "user", "content": question}, {"role": "assistant", "content": t}]
                   for t in text]
    # the model's context, checked before it reads anything (as the server checks a prompt)
    check_context(m, [len(prefix) + len(ids) for prefix, ids in
                      (sequence(tok, item) for item in items)], what="text",
                  hint="shorten it, or meter it in parts")
    chosen = load_meter(m, meter_file)
    for readings in read_texts(m, tok, items, chosen):
        console.print(render(readings))


def fit_meter(
    vectors: Annotated[Path | None, typer.Option(
        "--vectors", file_okay=False,
        help="the folder of <emotion>.safetensors the meter will read (default: ./vectors, "
             "else the vectors shipped for the bundled model)")] = None,
    emotions: EmotionsOpt = None,
    out: Annotated[Path, typer.Option(
        dir_okay=False, help="the meter JSON to write (give it to serve or meter with "
                             "--meter-file)")] = Path("meter.json"),
    limit: Annotated[int | None, typer.Option(
        min=1, help="training sentences per label (default: all)")] = None,
    model: ModelOpt = "default",
) -> None:
    """Fit the emotion meter for a set of vectors: its layer band and calibration chosen on a
    validation share of labelled sentences (emotion_corpus for the five and surprise, the
    emotion specs' examples for any other), refitted on them all; held-out sentences are never
    read.

    Example: [bold]emosteer fit-meter --vectors vectors/ --emotion calm,gratitude,joy[/bold]
    """
    from emosteer.cli.serve import served_vectors
    from emosteer.emotion_meter.fit import emotion_names
    from emosteer.emotion_meter.fit import fit_meter as fit

    folder, found = served_vectors(vectors)  # the folder `emosteer serve` would serve
    names = emotion_names(found, emotions)
    missing = [e for e in names if e not in found]
    if missing:
        raise UnknownEmotionError(f"no vector for {missing[0]!r} in {folder}: the vectors are "
                                  f"{', '.join(sorted(found))}")
    m, tok = load(model)
    meter = fit(m, tok, found, names, limit=limit)
    meter.save(out, folder, write_vectors=False)  # the meter names the folder it reads
    chosen = meter.card["selection"]["chosen"]
    console.print(plain(f"meter for {', '.join(names)} -> {out} (layers {chosen['layers'][0]}-"
                        f"{chosen['layers'][-1]}, {chosen['kind']}, validation accuracy "
                        f"{chosen['accuracy']:.2f}, AUC {chosen['auc']:.2f})"))
