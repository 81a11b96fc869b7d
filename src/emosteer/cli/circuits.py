"""Commands of the circuits method: discover, and experiment compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emosteer.cli.common import clean, console, load, plain, writable_folder
from emosteer.cli.options import (
    CIRCUITS,
    AlphaListOpt,
    EmotionsOpt,
    GenerateOptions,
    HeldOutSkeletonsOpt,
    ModelOpt,
    OptionGroup,
    SkeletonsOpt,
    given,
    numbers,
    split_commas,
    with_groups,
)
from emosteer.errors import BadInputError

if TYPE_CHECKING:
    from emosteer.circuits.discover import DiscoverConfig
    from emosteer.evaluate.compare import CompareConfig


def _counts(**values: int | None) -> dict[str, Any]:
    """The skeleton counts given: 0 means all (None in the config); left out keeps the
    config's value."""
    return {name: value or None for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class DiscoverOptions(OptionGroup):
    """What `discover` reads and checks; None keeps DiscoverConfig's value.

    Example:
        DiscoverOptions(skeletons=10, budget=64).config(GenerateOptions())
    """

    defaults = "DiscoverConfig"
    emotions: EmotionsOpt = None
    skeletons: SkeletonsOpt = None
    test_skeletons: HeldOutSkeletonsOpt = None
    budget: Annotated[int | None, typer.Option(
        min=1, help="components per emotion in the circuit")] = None
    ks: Annotated[list[str] | None, typer.Option(
        "--k", "--ks", callback=split_commas,
        help="how many components the checks ablate/enhance; repeat for several")] = None

    def config(self, gen: GenerateOptions) -> DiscoverConfig:
        """DiscoverConfig with the options that were given (the seed is the sampling seed)."""
        from emosteer.circuits.discover import DiscoverConfig

        k_values = numbers(self.ks, "--ks", int)
        base = DiscoverConfig()
        return DiscoverConfig(
            **_counts(skeletons=self.skeletons, test_skeletons=self.test_skeletons), **given(
                emotions=tuple(self.emotions) if self.emotions else None, budget=self.budget,
                seed=gen.seed, ks=tuple(k_values) if k_values else None),
            generation=gen.config(base.generation))


@with_groups
def discover(
    model: ModelOpt = "default",
    out: Annotated[Path, typer.Option(
        file_okay=False, help="folder for the circuit, directions, vectors, plots and "
                              "report.md")] = CIRCUITS,
    search: DiscoverOptions = DiscoverOptions(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Find the heads and neurons that carry each emotion (SEV dataset) and save a circuit.

    Example: [bold]emosteer discover --skeletons 10 --test-skeletons 10 --out circuits/[/bold]
    """
    from rich.table import Table

    from emosteer.circuits.discover import discover as run
    from emosteer.circuits.report import save

    cfg = search.config(gen)
    writable_folder(out)
    m, tok = load(model)
    result = run(m, tok, cfg)
    paths = save(result, out, list(cfg.emotions))
    s = result.summary
    table = Table("emotion", "confirmed", "heads", "neurons", title="circuit per emotion")
    for e in cfg.emotions:
        table.add_row(plain(e), f"{s['confirmed'][e]}/{s['asked'][e]}",
                      str(s["circuit_size"][e]["head"]), str(s["circuit_size"][e]["neuron"]))
    console.print(table)
    console.print(plain(f"{s['seconds']['total_s']:.0f} s; circuit: {paths['circuit']}; "
                        f"report: {paths['report']}; then `emosteer experiment compare "
                        f"--circuits {out}`"))


@dataclass(frozen=True)
class CompareOptions(OptionGroup):
    """Which scenes `experiment compare` uses and what it tries; None keeps CompareConfig's.

    Example:
        CompareOptions(alphas=["1", "2"]).config(("joy", "anger"), GenerateOptions())
    """

    defaults = "CompareConfig"
    test_skeletons: HeldOutSkeletonsOpt = None
    calibration_skeletons: Annotated[int | None, typer.Option(
        min=1, help="discovery skeletons for choosing alpha and strength")] = None
    alphas: AlphaListOpt = None
    strengths: Annotated[list[str] | None, typer.Option(
        "--strengths", "--strength", callback=split_commas,
        help="a circuit strength tried (per emotion); repeat for several")] = None

    def config(self, emotions: tuple[str, ...], gen: GenerateOptions) -> CompareConfig:
        """CompareConfig for the circuit's emotions with the options that were given."""
        from emosteer.evaluate.compare import CompareConfig

        tried = {name: numbers(values, f"--{name}") for name, values in
                 (("alphas", self.alphas), ("strengths", self.strengths))}
        base = CompareConfig()
        return CompareConfig(emotions=emotions, **given(
            calibration_skeletons=self.calibration_skeletons, seed=gen.seed,
            **{k: tuple(v) for k, v in tried.items() if v is not None}),
            **_counts(test_skeletons=self.test_skeletons),
            generation=gen.config(base.generation))


@with_groups
def compare(
    model: ModelOpt = "default",
    circuits: Annotated[Path, typer.Option(
        file_okay=False, help="the folder `emosteer discover` wrote")] = CIRCUITS,
    tried: CompareOptions = CompareOptions(),
    gen: GenerateOptions = GenerateOptions(),
) -> None:
    """Prompting vs emotion-vector steering vs circuit modulation on held-out SEV scenes.

    Example: [bold]emosteer discover && emosteer experiment compare[/bold]
    """
    from emosteer.circuits import EmotionCircuit
    from emosteer.evaluate.compare import compare as run
    from emosteer.evaluate.compare import markdown, save
    from emosteer.vectors import EmotionVector

    path = circuits / "circuit.safetensors"
    if not path.is_file():
        raise BadInputError(f"no circuit in {circuits}/: run `emosteer discover --out "
                            f"{circuits}` first")
    circuit = EmotionCircuit.load(path)
    vectors = {e: EmotionVector.load(circuits / "vectors" / f"{e}.safetensors")
               for e in circuit.emotions}
    cfg = tried.config(tuple(circuit.emotions), gen)
    writable_folder(circuits, "--circuits")
    m, tok = load(model)
    result = run(m, tok, circuit, vectors, cfg)
    files = save(result, circuits)
    console.print(clean(markdown(result)), markup=False)
    console.print(plain(f"chosen on discovery scenes: {result['calibration']['chosen']}; "
                        f"{result['seconds']:.0f} s; rows: {files['json']}"))
