"""The generate command: answer questions steered by a vector, a mix, or a circuit.

With --meter, each answer is printed with its tokens coloured by the emotion meter (read while
generating: the meter's hooks record every token, no extra pass) and a sparkline per emotion.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emosteer.cli.common import console, load, plain, vectors_in
from emosteer.cli.meter import MeterFileOpt
from emosteer.cli.options import (
    VECTORS,
    ForceOpt,
    GenerateOptions,
    ModelOpt,
    VectorsDirOpt,
    given,
    numbers,
    split_commas,
    texts,
    utf8,
    with_groups,
)
from emosteer.errors import BadInputError

if TYPE_CHECKING:
    from emosteer.generation import GenerateConfig

ONE_SOURCE = ("pass exactly one of --emotion NAME, --vector FILE, --mix joy=1 (repeat for more "
              "emotions) or --circuit FILE --emotion NAME")


def parse_mix(items: Sequence[str]) -> dict[str, float]:
    """["joy=1", "anger=-0.5", "fear"] -> {"joy": 1.0, "anger": -0.5, "fear": 1.0}.

    Only the syntax is checked here; `emosteer.vectors.mix` checks each weight's range.

    Example:
        >>> parse_mix(["joy=1.5", "anger=-0.5"])
        {'joy': 1.5, 'anger': -0.5}
    """
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise BadInputError(f"bad --mix item {item!r}: write name=weight, e.g. --mix joy=1 "
                                "--mix anger=0.5 (or --mix joy=1,anger=0.5)") from None
    return weights


def library_default(func: Callable[..., Any], name: str) -> Any:
    """The default of `func`'s argument `name`: the library keeps it, the CLI reads it.

    Example:
        library_default(generate_text, "alpha")  # 1.0
    """
    return inspect.signature(func).parameters[name].default


@with_groups
def generate(
    questions: Annotated[list[str], typer.Argument(help="one or more questions",
                                                   callback=texts)],
    model: ModelOpt = "default",
    vector: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="a vector file")] = None,
    mix: Annotated[list[str] | None, typer.Option(
        callback=split_commas, help="emotion=weight, repeat for several: --mix joy=1 --mix "
                                    "anger=0.5 (joy=1,anger=0.5 also works)")] = None,
    vectors_dir: VectorsDirOpt = VECTORS,
    circuit: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="a circuit file from `emosteer discover`")] = None,
    emotion: Annotated[str | None, typer.Option(
        help="the emotion to express: its vector from --vectors-dir (the shipped vectors "
             "when ./vectors holds none), or with --circuit the circuit's")] = None,
    alpha: Annotated[list[str] | None, typer.Option(
        "--alpha", "--alphas", callback=split_commas,
        help="steering (or circuit) strength; repeat to compare"
             " (default: generate_text's alpha)")] = None,
    layers: Annotated[list[str] | None, typer.Option(
        "--layer", "--layers", callback=split_commas,
        help="a layer index to steer; repeat for several (default: all in the vector)")] = None,
    positions: Annotated[str | None, typer.Option(
        help="all, or generated (newest token only) (default: steer's positions)")] = None,
    system: Annotated[str | None, typer.Option(callback=utf8, help="a system prompt")] = None,
    force: ForceOpt = False,
    meter: Annotated[bool, typer.Option(
        "--meter", help="show the emotion meter: tokens coloured by their dominant emotion "
                        "and a sparkline per emotion")] = False,
    meter_file: MeterFileOpt = None,
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Answer questions steered by a vector or a mix of emotions.

    Example: [bold]emosteer generate "How was your day?" --emotion anger[/bold]  (the vectors
    shipped for the bundled model, calibrated: alpha 1 is the recommended strength)

    Mixes: [bold]emosteer generate "How was your day?" --mix joy=1.5 --alpha 0 --alpha 1[/bold]

    Through a circuit: [bold]emosteer generate "The bus is late again." --circuit
    circuits/circuit.safetensors --emotion fear --alpha 1[/bold]

    With the meter: [bold]emosteer generate "How was your day?" --mix joy=1 --meter[/bold]
    """
    from emosteer.steering import check_alpha

    by_name = emotion is not None and circuit is None  # --emotion anger: the folder's vector
    if sum(x is not None for x in (vector, mix, circuit)) + by_name != 1:
        raise BadInputError(ONE_SOURCE)
    if by_name:
        mix = [f"{emotion}=1"]
    # check_alpha parses text itself, so its message names the value as typed
    strengths = [check_alpha(a) for a in alpha] if alpha else None
    options = given(positions=positions, allow_other_model=force or None)
    shown = Shown(meter or meter_file is not None, meter_file)
    if circuit is not None:
        if layers:
            raise BadInputError("--layers applies to vectors: a circuit names its own heads "
                                "and neurons")
        _by_circuit(questions, model, circuit, emotion, strengths, system, gen.config(),
                    options, shown)
    else:
        chosen = numbers(layers, "--layers", int)
        _by_vector(questions, model, vector, mix, vectors_dir, strengths, system,
                   gen.config(), {**options, **given(layers=chosen)}, shown)


def check_fits(m: Any, tok: Any, questions: list[str], system: str | None,
               cfg: GenerateConfig) -> None:
    """Refuse, before the model runs, a question whose chat prompt and answer would not fit
    in the model's context (one line, exit 2, as the server answers a 400)."""
    from emosteer.generation import chat_prompt, check_context, prompt_tokens

    prompts = [chat_prompt(tok, q, system) for q in questions]
    check_context(m, prompt_tokens(tok, prompts), cfg.max_new_tokens, "question",
                  "shorten it (or lower --max-new-tokens)")


@dataclass(frozen=True)
class Shown:
    """How answers are shown: in a table, or (--meter) each metered while it is generated."""

    metered: bool = False
    meter_file: Path | None = None  # None: the meter shipped for the model

    def run(self, m: Any, tok: Any, questions: list[str], context: Any, label: str,
            system: str | None, cfg: GenerateConfig) -> None:
        """Generate under `context` (an unentered steer or modulate) with the meter's hooks
        registered first, and print each answer metered."""
        from emosteer.cli.meter import render
        from emosteer.emotion_meter.meter import load_meter
        from emosteer.emotion_meter.read import generate_metered

        chosen = load_meter(m, self.meter_file)
        answers = generate_metered(m, tok, questions, chosen, context, system, cfg)
        for q, readings in zip(questions, answers, strict=True):
            console.print(render(readings, f"{q}  ({label})"))
            console.print()


def _by_vector(questions: list[str], model: str, vector: Path | None, mix: list[str] | None,
               folder: Path, strengths: list[float] | None, system: str | None,
               cfg: GenerateConfig, options: dict[str, Any], shown: Shown) -> None:
    from rich.table import Table

    from emosteer.generation import generate_text
    from emosteer.steering import steer
    from emosteer.vectors import EmotionVector
    from emosteer.vectors import mix as mix_vectors

    steering = (EmotionVector.load(vector) if vector is not None
                else mix_vectors(vectors_in(folder), parse_mix(mix or [])))
    m, tok = load(model)
    check_fits(m, tok, questions, system, cfg)
    if shown.metered:
        for a in strengths or [library_default(generate_text, "alpha")]:
            shown.run(m, tok, questions, steer(m, steering, a, **options),
                      f"alpha {a:g}, {steering.emotion}", system, cfg)
        return
    table = Table("question", "alpha", f"answer steered by {plain(steering.emotion)}",
                  show_lines=True)
    for a in strengths or [library_default(generate_text, "alpha")]:
        answers = generate_text(m, tok, questions, steering, a, system=system, cfg=cfg,
                                **options)
        for q, text in zip(questions, answers, strict=True):
            table.add_row(plain(q), f"{a:g}", plain(text))
    console.print(table)


def _by_circuit(questions: list[str], model: str, path: Path, emotion: str | None,
                strengths: list[float] | None, system: str | None, cfg: GenerateConfig,
                options: dict[str, Any], shown: Shown) -> None:
    from rich.table import Table

    from emosteer.circuits import EmotionCircuit, modulate
    from emosteer.generation import generate_text

    circuit = EmotionCircuit.load(path)
    if emotion is None:
        raise BadInputError(f"--circuit needs --emotion: one of {', '.join(circuit.emotions)}")
    circuit.of(emotion)  # an unknown emotion fails before the model loads
    m, tok = load(model)
    check_fits(m, tok, questions, system, cfg)
    if shown.metered:
        for strength in strengths or [library_default(modulate, "strength")]:
            shown.run(m, tok, questions, modulate(m, circuit, emotion, strength, **options),
                      f"{emotion} circuit, strength {strength:g}", system, cfg)
        return
    table = Table("question", "strength", f"answer through the {plain(emotion)} circuit",
                  show_lines=True)
    for strength in strengths or [library_default(modulate, "strength")]:
        with modulate(m, circuit, emotion, strength, **options):
            answers = generate_text(m, tok, questions, system=system, cfg=cfg)
        for q, text in zip(questions, answers, strict=True):
            table.add_row(plain(q), f"{strength:g}", plain(text))
    console.print(table)
