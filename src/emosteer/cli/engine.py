"""`--engine builtin|vllm`: where a command's answers are generated, and vLLM's own options.

With vllm, `extract` and the experiments generate their answers in vLLM (the plugin steers
each request by its own mix of the served vectors); the activation reading, perplexity and
the judges stay in transformers. `serve --engine vllm` runs vLLM's OpenAI server instead of
emosteer's own. No vLLM (or torch) import happens here until a vllm engine is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emosteer.cli.common import console, plain
from emosteer.cli.options import OptionGroup
from emosteer.errors import BadInputError

if TYPE_CHECKING:
    from emosteer.extraction.extract import ExtractConfig, Generated

ENGINES = ("builtin", "vllm")


def engine_name(value: str) -> str:
    """Callback of --engine: builtin or vllm.

    Example:
        >>> engine_name("vllm")
        'vllm'
    """
    if value not in ENGINES:
        raise typer.BadParameter(f"{value!r}: choose builtin or vllm")
    return value


EngineOpt = Annotated[str, typer.Option(
    callback=engine_name,
    help="where answers are generated: builtin (transformers generate) or vllm (vLLM "
         "batches, each request steered by the plugin; needs the vllm extra); "
         "the activation reading stays in transformers")]
VllmArgOpt = Annotated[list[str] | None, typer.Option(
    "--vllm-arg", help="NAME=VALUE for vllm.LLM with --engine vllm (e.g. dtype=float32, "
                       "tensor_parallel_size=2; a JSON value or text); repeat for several")]


def vllm_kwargs(items: list[str] | None) -> dict[str, Any]:
    """--vllm-arg NAME=VALUE items as keyword arguments; VALUE is JSON if it parses, else text.

    Example:
        >>> vllm_kwargs(["dtype=float32", "max_model_len=2048"])
        {'dtype': 'float32', 'max_model_len': 2048}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise BadInputError(f"bad --vllm-arg {item!r}: write NAME=VALUE, e.g. "
                                "--vllm-arg dtype=float32")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


@dataclass(frozen=True)
class EngineOptions(OptionGroup):
    """Where answers are generated, and vLLM's own options with --engine vllm.

    Example:
        EngineOptions(engine="vllm", vllm_arg=["dtype=float32"]).check()
    """

    engine: EngineOpt = "builtin"
    vllm_arg: VllmArgOpt = None

    def check(self) -> None:
        """--vllm-arg goes with --engine vllm only (checked before anything loads)."""
        if self.vllm_arg and self.engine != "vllm":
            raise BadInputError("--vllm-arg is for --engine vllm: add --engine vllm, or "
                                "drop it")
        vllm_kwargs(self.vllm_arg)
        if self.engine == "vllm":
            from emosteer.vllm.launcher import require_vllm

            require_vllm()

    def generations(self, model: str, cfg: ExtractConfig) -> list[Generated] | None:
        """Extraction's answers from vLLM (CPU tensors), or None for the builtin engine."""
        return vllm_generations(model, cfg, self.vllm_arg) if self.engine == "vllm" else None

    def attach(self, runner: Any, model: str, vectors: Path | None) -> None:
        """With vllm, make the experiment runner generate there, serving `vectors`."""
        if self.engine == "vllm":
            use_vllm(runner, model, vectors, self.vllm_arg)


def vllm_engine(model: str, vectors: Path | None, items: list[str] | None,
                force: bool = False) -> Any:
    """An offline vllm.LLM of `model` serving the vectors of `vectors` (None: unsteered only).

    Example:
        engine = vllm_engine("default", Path("vectors"), ["dtype=float32"])
    """
    from emosteer.vllm import launcher

    kwargs = vllm_kwargs(items)
    console.print(f"starting vLLM for {plain(model)} (about a minute on a CPU) ...")
    return launcher.llm(model, vectors, force, **kwargs)


def vllm_generations(model: str, cfg: ExtractConfig, items: list[str] | None) -> list[Generated]:
    """Extraction's answers generated on vLLM; the engine is closed before the reading loads.

    Example:
        gens = vllm_generations("default", ExtractConfig(limit=40), None)
    """
    import gc

    from emosteer.vllm.generate import extraction_generations

    engine = vllm_engine(model, None, items)
    try:
        return extraction_generations(engine, cfg)
    finally:
        del engine
        gc.collect()


def use_vllm(runner: Any, model: str, vectors: Path | None, items: list[str] | None) -> None:
    """Make the experiment runner generate on vLLM, serving the folder it read its vectors
    from (None: no vectors, unsteered and prompted answers only)."""
    from emosteer.vectors import load_vectors
    from emosteer.vllm.generate import VllmAnswerer

    served = load_vectors(vectors) if vectors is not None else {}
    runner.engine = VllmAnswerer(vllm_engine(model, vectors, items), served)


def on_device(gens: list[Generated] | None, model: Any) -> list[Generated] | None:
    """vLLM's generations moved to the reading model's device (None stays None)."""
    if gens is None:
        return None
    from dataclasses import replace

    return [replace(g, batch=g.batch.to(model.device)) for g in gens]
