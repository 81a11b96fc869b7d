"""Commands of the circuits method: discover, and experiment compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from emosteer.cli.common import console, load
from emosteer.cli.options import (
    CIRCUITS,
    EmotionsOpt,
    GenerateOptions,
    ModelOpt,
    SkeletonsOpt,
    given,
    numbers,
    split_commas,
    with_groups,
)
from emosteer.errors import BadInputError


def _counts(**values: int | None) -> dict[str, Any]:
    """The skeleton counts given: 0 means all (None in the config); left out keeps the
    config's value."""
    return {name: value or None for name, value in values.items() if value is not None}


@with_groups
def discover(
    model: ModelOpt = "default",
    out: Annotated[Path, typer.Option(
        file_okay=False, help="folder for the circuit, directions, vectors, plots and "
                              "report.md")] = CIRCUITS,
    emotions: EmotionsOpt = None,
    skeletons: SkeletonsOpt = None,
    test_skeletons: Annotated[int | None, typer.Option(
        min=0, help="held-out SEV skeletons for the causal checks; 0: all (default: "
                    "DiscoverConfig.test_skeletons)")] = None,
    budget: Annotated[int | None, typer.Option(
        min=1, help="components per emotion in the circuit"
                    " (default: DiscoverConfig.budget)")] = None,
    ks: Annotated[list[str] | None, typer.Option(
        "--k", "--ks", callback=split_commas,
        help="how many components the checks ablate/enhance; repeat for several "
             "(default: DiscoverConfig.ks)")] = None,
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Find the heads and neurons that carry each emotion (SEV dataset) and save a circuit.

    Example: [bold]emosteer discover --skeletons 10 --test-skeletons 10 --out circuits/[/bold]
    """
    from rich.table import Table

    from emosteer.circuits.discover import DiscoverConfig, save
    from emosteer.circuits.discover import discover as run

    k_values = numbers(ks, "--ks", int)
    base = DiscoverConfig()
    cfg = DiscoverConfig(**_counts(skeletons=skeletons, test_skeletons=test_skeletons), **given(
        emotions=tuple(emotions) if emotions else None, budget=budget, seed=gen.seed,
        ks=tuple(k_values) if k_values else None), generation=gen.config(base.generation))
    m, tok = load(model)
    result = run(m, tok, cfg)
    paths = save(result, out, list(cfg.emotions))
    s = result.summary
    table = Table("emotion", "confirmed", "heads", "neurons", title="circuit per emotion")
    for e in cfg.emotions:
        table.add_row(e, f"{s['confirmed'][e]}/{s['asked'][e]}",
                      str(s["circuit_size"][e]["head"]), str(s["circuit_size"][e]["neuron"]))
    console.print(table)
    console.print(f"{s['seconds']['total_s']:.0f} s; circuit: {paths['circuit']}; report: "
                  f"{paths['report']}; then `emosteer experiment compare --circuits {out}`")


@with_groups
def compare(
    model: ModelOpt = "default",
    circuits: Annotated[Path, typer.Option(
        file_okay=False, help="the folder `emosteer discover` wrote")] = CIRCUITS,
    test_skeletons: Annotated[int | None, typer.Option(
        min=0, help="held-out SEV test skeletons (x 3 valences); 0: all (default: "
                    "CompareConfig.test_skeletons)")] = None,
    calibration_skeletons: Annotated[int | None, typer.Option(
        min=1, help="discovery skeletons for choosing alpha and strength (default: "
                    "CompareConfig.calibration_skeletons)")] = None,
    alphas: Annotated[list[str] | None, typer.Option(
        "--alphas", "--alpha", callback=split_commas,
        help="a steering alpha tried (per emotion); repeat for several (default: "
             "CompareConfig.alphas)")] = None,
    strengths: Annotated[list[str] | None, typer.Option(
        "--strengths", "--strength", callback=split_commas,
        help="a circuit strength tried (per emotion); repeat for several (default: "
             "CompareConfig.strengths)")] = None,
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Prompting vs emotion-vector steering vs circuit modulation on held-out SEV scenes.

    Example: [bold]emosteer discover && emosteer experiment compare[/bold]
    """
    from emosteer.circuits import EmotionCircuit
    from emosteer.evaluate.compare import CompareConfig, markdown, save
    from emosteer.evaluate.compare import compare as run
    from emosteer.vectors import EmotionVector

    path = circuits / "circuit.safetensors"
    if not path.is_file():
        raise BadInputError(f"no circuit in {circuits}/: run `emosteer discover --out "
                            f"{circuits}` first")
    circuit = EmotionCircuit.load(path)
    vectors = {e: EmotionVector.load(circuits / "vectors" / f"{e}.safetensors")
               for e in circuit.emotions}
    tried = {name: numbers(values, f"--{name}") for name, values in
             (("alphas", alphas), ("strengths", strengths))}
    base = CompareConfig()
    cfg = CompareConfig(emotions=tuple(circuit.emotions), **given(
        calibration_skeletons=calibration_skeletons, seed=gen.seed,
        **{k: tuple(v) for k, v in tried.items() if v is not None}),
        **_counts(test_skeletons=test_skeletons),
        generation=gen.config(base.generation))
    m, tok = load(model)
    result = run(m, tok, circuit, vectors, cfg)
    files = save(result, circuits)
    console.print(markdown(result))
    console.print(f"chosen on discovery scenes: {result['calibration']['chosen']}; "
                  f"{result['seconds']:.0f} s; rows: {files['json']}")
