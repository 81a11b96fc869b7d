"""The method search: experiment frontier (evaluate/frontier.py does the work)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emosteer.cli.common import console, load, plain, writable_folder
from emosteer.cli.engine import EngineOptions
from emosteer.cli.options import (
    EXTRACT_LIMIT,
    EmotionsOpt,
    GenerateOptions,
    ModelOpt,
    OptionGroup,
    OutDirOpt,
    given,
    split_commas,
    with_groups,
)
from emosteer.errors import BadInputError, EmosteerError

if TYPE_CHECKING:
    from emosteer.evaluate.frontier import FrontierConfig

VECTORS_DIR = Path("runs/frontier/vectors")  # <method>/<emotion>.safetensors


@dataclass(frozen=True)
class SearchOptions(OptionGroup):
    """What the search tries and how it chooses; None keeps FrontierConfig's value.

    Example:
        SearchOptions(methods=["mean_diff"], limit=2).config()  # FrontierConfig(...)
    """

    defaults = "FrontierConfig"
    methods: Annotated[list[str] | None, typer.Option(
        "--method", "--methods", callback=split_commas,
        help="a method (mean_diff, centered, band, band_auto, norm, filtered, filtered_ctx, "
             "filtered_ctx_100, filtered_ctx_more, filtered_ctx_100_generated, "
             "filtered_ctx_100_band, trained, trained_ctx_100, prompt, filtered_ctx_100_shipped, "
             "filtered_ctx_100_shipped_prompt, filtered_ctx_100_shipped_noapology, "
             "written, "
             "written_centered, written_trained, written_keepnorm, written_residual, "
             "written_residual_keepnorm, written_prompt, prefill, fewshot); repeat for several "
             "(default: frontier.METHODS, all)")] = None
    emotions: EmotionsOpt = None
    calibration_limit: Annotated[int | None, typer.Option(
        min=1, help="calibration questions per EQ+ category, the only ones that choose")] = None
    limit: Annotated[int | None, typer.Option(
        min=1, help="held-out questions per EQ+ category, the only ones reported")] = None
    judges: Annotated[list[str] | None, typer.Option(
        "--judge", callback=split_commas,
        help="a judge spec; repeat for a second opinion (default: embedded-a and embedded-b, "
             "trained on disjoint halves of emotion_corpus; for emotions beyond the five, "
             "zero-shot-a and zero-shot-b)")] = None
    max_ppl_ratio: Annotated[float | None, typer.Option(
        min=1.0, max=1e6, help="fluency bound, x the unsteered PPL")] = None
    min_topic: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="topic bound")] = None

    def config(self) -> FrontierConfig:
        """FrontierConfig with the options that were given; an unknown method is refused."""
        from emosteer.evaluate import frontier as F

        known = {m.name: m for m in F.METHODS}
        unknown = [m for m in self.methods or () if m not in known]
        if unknown:
            raise BadInputError(f"unknown method {unknown[0]!r}: choose from "
                                f"{', '.join(known)}")
        return F.FrontierConfig(**given(
            methods=tuple(known[m] for m in self.methods) if self.methods else None,
            emotions=tuple(self.emotions) if self.emotions else None,
            calibration_limit=self.calibration_limit, limit=self.limit,
            judges=tuple(self.judges) if self.judges else
            F.judges_for(self.emotions) if self.emotions else None,
            max_ppl_ratio=self.max_ppl_ratio, min_topic=self.min_topic))


@with_groups
def frontier(
    vectors: Annotated[Path, typer.Option(
        "--vectors", file_okay=False,
        help="one folder of vectors per method: <vectors>/<method>/<emotion>.safetensors")
    ] = VECTORS_DIR,
    search: SearchOptions = SearchOptions(),
    extract: Annotated[bool, typer.Option(
        "--extract/--no-extract",
        help="first extract the methods whose folder is missing (the five from emotion_query, "
             "other emotions from the emotion specs)")] = False,
    extract_limit: Annotated[int, typer.Option(
        min=1, help="--extract: extraction queries per emotion")] = EXTRACT_LIMIT,
    out: OutDirOpt = Path("runs/frontier"),
    model: ModelOpt = "default",
    gen: GenerateOptions = GenerateOptions(),
    eng: EngineOptions = EngineOptions(),
) -> None:
    """Each method x emotion x strength on the calibration split; the best setting within
    PPL <= 1.3x unsteered and topic >= 0.9 reported on the held-out split, by two judges.

    Example: [bold]emosteer experiment frontier --method mean_diff --method trained --extract[/bold]

    With [bold]--engine vllm[/bold] the answers are generated on vLLM (its own venv: docs/vllm.md),
    serving every vector the search steers with; the judges and PPL stay in transformers.
    """
    from emosteer.evaluate import frontier as F
    from emosteer.evaluate import frontier_report
    from emosteer.judges.registry import load_judge

    cfg = search.config()
    eng.check()
    for spec in cfg.judges:
        load_judge(spec)  # a bad spec fails before the model loads
    writable_folder(out)
    if extract:
        writable_folder(vectors, "--vectors")
    m, tok = load(model)
    if extract:
        _extract_missing(m, tok, cfg, vectors, extract_limit, gen)
    generation = gen.config(F.eval_config(cfg).generation)
    engine = None
    if eng.engine == "vllm":  # the answers on vLLM, serving every vector the grid steers with
        from emosteer.cli.engine import vllm_engine
        from emosteer.vectors import load_vectors
        from emosteer.vllm.generate import VllmAnswerer

        served = F.engine_vectors(F.plan(cfg, vectors)[0], out / "vllm-vectors")
        engine = VllmAnswerer(vllm_engine(model, served, eng.vllm_arg), load_vectors(served))
    try:
        result = frontier_report.run(m, tok, vectors, out, cfg, generation=generation,
                                     seed=generation.seed, engine=engine)
    except EmosteerError as err:
        raise type(err)(f"{err} (answers and scores so far are kept in {out}/; rerun the same "
                        "command to resume)") from err
    _print_result(result, cfg)


def _extract_missing(model: Any, tokenizer: Any, cfg: FrontierConfig, vectors: Path,
                     limit: int, gen: GenerateOptions) -> None:
    """--extract: build the folders of the methods that have none, and say where."""
    from emosteer.emotions import VECTOR_EMOTIONS
    from emosteer.evaluate.frontier_vectors import build_vectors
    from emosteer.extraction.extract import ExtractConfig

    beyond = any(e not in VECTOR_EMOTIONS for e in cfg.emotions)  # from the specs' questions
    base = ExtractConfig(emotions=cfg.emotions, limit=limit,
                         dataset="emotion_specs" if beyond else "emotion_query")
    built = build_vectors(model, tokenizer, cfg.methods, vectors, replace(
        base, generation=gen.config(base.generation)))
    for name, folder in built.items():
        console.print(plain(f"extracted {name} -> {folder}"))


def _print_result(result: Any, cfg: FrontierConfig) -> None:
    """The held-out table and where the report and the rows are."""
    from emosteer.evaluate.frontier_report import summary_table

    console.print(f"held out: EPS by {' / '.join(cfg.judges)} at each method's chosen setting")
    console.print(summary_table(result, cfg.judges, cfg.emotions), markup=False)
    console.print(plain(f"report: {result.files['html']} (markdown: "
                        f"{result.files['markdown']}, rows: {result.files['summary']}, every "
                        f"setting: {result.files['calibration']})"))
