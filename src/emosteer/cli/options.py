"""Options shared by the commands: typer `Annotated` aliases and one dataclass per concern.

A default lives in the library's config dataclass, never here: an option left out arrives
as None and the library's value stands (`GenerateOptions.config(base)` fills in only what
was given). The folders below are the CLI's own conventions, named once.

Lists have one convention: every list option is repeatable (`--emotion joy --emotion
anger`), and a comma inside a value is split, so the older comma forms (`--emotions
joy,anger`, `--alphas=-1,1,2`) keep working as deprecation aliases.

Ranges are declared on the option (`min=`, `max=`), so typer refuses a bad value with one
line before anything loads; tests/test_cli_options.py walks every option to check it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer
from typer.models import OptionInfo

from emosteer.errors import BadInputError

if TYPE_CHECKING:
    from emosteer.generation import GenerateConfig

VECTORS = Path("vectors")  # where `extract` writes and `generate`/`serve` read vectors
CIRCUITS = Path("circuits")  # where `discover` writes and `experiment compare` reads
EXTRACT_LIMIT = 40  # extraction queries per emotion in `demo` and for missing vectors
MAX_SEED = 2**32 - 1  # the usual seed range (numpy takes no more)


# --- parsing helpers (typer callbacks) -------------------------------------------------------
def split_commas(values: list[str] | None) -> list[str] | None:
    """Callback of every list option: ["joy,anger", "fear"] -> ["joy", "anger", "fear"].

    Example:
        >>> split_commas(["-1,0", "2"])
        ['-1', '0', '2']
    """
    if not values:
        return None
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items:
        raise typer.BadParameter("no value given: write e.g. --emotion joy")
    return items


def numbers(values: Sequence[str] | None, option: str, kind: type = float) -> list | None:
    """Parse a list option's items as numbers, or say which item is not one.

    Example:
        >>> numbers(["1", "2.5"], "--weights")
        [1.0, 2.5]
    """
    if values is None:
        return None
    out = []
    for item in values:
        try:
            value = kind(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BadInputError(f"bad {option} value {item!r}: write finite "
                                f"{'whole ' if kind is int else ''}numbers, e.g. {option} 1 "
                                f"{option} 2 (or {option} 1,2)")
        out.append(value)
    return out


def finite(text: str) -> float:
    """Parser of a float option that takes any finite number (the library checks its range).

    Example:
        >>> finite("1.5")
        1.5
    """
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number: write e.g. 1.5") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"{text} is not a finite number: write e.g. 1.5")
    return value


def _check_utf8(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # argv bytes that are not UTF-8 arrive as surrogates
        byte = ord(text[err.start]) - 0xDC00
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else repr(text[err.start])
        raise typer.BadParameter(f"{what} is not valid UTF-8 ({shown} at character "
                                 f"{err.start}): pass UTF-8 text") from None
    return text


def utf8(value: str | None) -> str | None:
    """Callback of a text option: refuse text that is not valid UTF-8.

    Example:
        >>> utf8("héllo")
        'héllo'
    """
    return None if value is None else _check_utf8(value, "the text")


def texts(values: list[str] | None) -> list[str] | None:
    """Callback of text arguments: each valid UTF-8 and not blank.

    Example:
        >>> texts(["How was your day?"])
        ['How was your day?']
    """
    for i, value in enumerate(values or [], 1):
        _check_utf8(value, f"text {i}")
        if not value.strip():
            raise typer.BadParameter(f"text {i} is empty: pass the words to use, e.g. "
                                     "\"How was your day?\"")
    return values


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None): what overrides a config default.

    Example:
        >>> given(limit=None, seed=3)
        {'seed': 3}
    """
    return {k: v for k, v in values.items() if v is not None}


# --- aliases ----------------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", callback=utf8,
    help="'default' (bundled SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file")]
SeedOpt = Annotated[int | None, typer.Option(
    min=0, max=MAX_SEED, help="sampling seed (and question sample)"
                              " (default: the command's config)")]
MaxNewTokensOpt = Annotated[int | None, typer.Option(
    min=1, help="new tokens per answer (default: the command's GenerateConfig)")]
BatchSizeOpt = Annotated[int | None, typer.Option(
    min=1, help="answers per batch (default: GenerateConfig.batch_size)")]
GreedyOpt = Annotated[bool | None, typer.Option(
    "--greedy/--no-greedy", help="greedy decoding instead of sampling (temperature 0.6, "
                                 "top_p 0.9) (default: GenerateConfig.do_sample)")]
EmotionsOpt = Annotated[list[str] | None, typer.Option(
    "--emotion", "--emotions", "-e", callback=split_commas,
    help="an emotion; repeat for several (joy,anger also works) (default: the command's config)")]
ForceOpt = Annotated[bool, typer.Option(help="accept a vector made for another model id")]
JudgeOpt = Annotated[str | None, typer.Option(
    callback=utf8, help="embedded (offline), hf:<model id> (e.g. hf:facebook/bart-large-mnli) "
                        "or openai:<base url>#<model> (default: load_judge's spec)")]
VectorsDirOpt = Annotated[Path, typer.Option(
    "--vectors", "--vectors-dir", file_okay=False,
    help="folder of <emotion>.safetensors (each file stem is an emotion name)")]
OutDirOpt = Annotated[Path, typer.Option(file_okay=False, help="folder for the results")]
OutFileOpt = Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                          help="the file to write")]
InFileArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the file to read")]
SkeletonsOpt = Annotated[int | None, typer.Option(
    min=0, help="SEV skeletons (x 3 valences), seeded; 0: all (default: DiscoverConfig.skeletons)")]
HeldOutSkeletonsOpt = Annotated[int | None, typer.Option(  # in groups: they name the default
    min=0, help="held-out SEV test skeletons (x 3 valences); 0: all")]
AlphaListOpt = Annotated[list[str] | None, typer.Option(
    "--alphas", "--alpha", callback=split_commas,
    help="a steering alpha tried; repeat for several (-1,0,1 also works)"
         " (default: the command's config)")]


# --- option groups ----------------------------------------------------------------------------
class OptionGroup:
    """Base of the option dataclasses. A command parameter typed with one is expanded by
    `with_groups` into the dataclass's fields, each an option, and rebuilt on the call.

    A group that sets `defaults` (the library config its fields override) has each help
    without a "(default: ...)" note end in "(default: <defaults>.<field>)".
    """

    defaults: ClassVar[str | None] = None  # e.g. "FrontierConfig"

    @classmethod
    def option(cls, name: str, hint: Any) -> Any:
        """The field's `Annotated` hint, its help noting the config default (see `defaults`)."""
        base, *meta = typing.get_args(hint)
        if cls.defaults is None or not meta:
            return hint

        def noted(info: Any) -> Any:
            if isinstance(info, OptionInfo) and info.help and "(default:" not in info.help:
                info = copy.copy(info)  # an alias's OptionInfo is shared: never edit it
                info.help = f"{info.help} (default: {cls.defaults}.{name})"
            return info

        params = (base, *map(noted, meta))
        return Annotated[params]


def with_groups(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: parameters typed with an OptionGroup become that group's options.

    Example:
        @with_groups
        def extract(model: ModelOpt = "default", gen: GenerateOptions = GenerateOptions()): ...
    """
    sig = inspect.signature(func, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for p in sig.parameters.values():
        cls = p.annotation
        if isinstance(cls, type) and issubclass(cls, OptionGroup):
            groups[p.name] = cls
            hints = typing.get_type_hints(cls, include_extras=True)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                         default=f.default,
                                         annotation=cls.option(f.name, hints[f.name]))
                       for f in fields(cls)]  # type: ignore[arg-type]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = [p.name for p in params]
    if len(names) != len(set(names)):
        raise TypeError(f"{func.__name__}: option groups repeat a name in {names}")

    @functools.wraps(func)
    def run(**kwargs: Any) -> Any:
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})
        return func(**kwargs)

    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


@dataclass(frozen=True)
class GenerateOptions(OptionGroup):
    """How answers are generated; None keeps the library's GenerateConfig value.

    Example:
        GenerateOptions(max_new_tokens=16).config()  # GenerateConfig(max_new_tokens=16, ...)
    """

    max_new_tokens: MaxNewTokensOpt = None
    greedy: GreedyOpt = None
    seed: SeedOpt = None
    batch_size: BatchSizeOpt = None

    def config(self, base: GenerateConfig | None = None) -> GenerateConfig:
        """`base` (default: GenerateConfig()) with the options that were given."""
        from emosteer.generation import GenerateConfig

        sample = None if self.greedy is None else not self.greedy
        return replace(base or GenerateConfig(), **given(
            max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=self.batch_size,
            do_sample=sample))


@dataclass(frozen=True)
class EvalOptions(OptionGroup):
    """What every experiment shares: the model, questions, metrics and judges.

    Example:
        EvalOptions(limit=2, metrics=["eps"]).given()  # {"limit": 2, "metrics": ("eps",)}
    """

    model: ModelOpt = "default"
    limit: Annotated[int | None, typer.Option(
        min=1, help="evaluation questions per category (5 emotions + neutral), seeded "
                    "(default: EvalConfig.limit)")] = None
    metrics: Annotated[list[str] | None, typer.Option(
        "--metric", "--metrics", callback=split_commas,
        help="a metric from the registry; repeat for several (default: EvalConfig.metrics)"
    )] = None
    judge: JudgeOpt = None
    topic: Annotated[str | None, typer.Option(
        help="embedding (MiniLM, offline) or judge (an openai: judge) (default: EvalConfig.topic)"
    )] = None
    ppl_model: Annotated[str | None, typer.Option(
        callback=utf8, help="reference LM for perplexity (default: the model, unsteered)"
    )] = None

    def given(self) -> dict[str, Any]:
        """The EvalConfig fields these options set."""
        return given(limit=self.limit, judge=self.judge, topic=self.topic,
                     metrics=tuple(self.metrics) if self.metrics else None)


@dataclass(frozen=True)
class VectorSource(OptionGroup):
    """Where an experiment finds its vectors, and how many queries extract missing ones.

    Example:
        VectorSource(vectors=Path("vectors"), extract_limit=40)
    """

    vectors: Annotated[Path, typer.Option(
        "--vectors", "--vectors-dir", file_okay=False,
        help="<emotion>.safetensors and base.safetensors; extracted there first if missing"
    )] = VECTORS
    extract_limit: Annotated[int, typer.Option(
        min=1, help="extraction queries per emotion when vectors are missing")] = EXTRACT_LIMIT


@dataclass(frozen=True)
class AutoOptions(OptionGroup):
    """How `--alpha auto` calibrates; None keeps the library's AutoAlpha value.

    Example:
        AutoOptions(target_eps=0.6).given()  # {"target_eps": 0.6}
    """

    target_eps: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="--alpha auto: EPS to reach (default: AutoAlpha.target_eps)"
    )] = None
    max_ppl_ratio: Annotated[float | None, typer.Option(
        min=1.0, max=1e6, help="--alpha auto: PPL bound, x unsteered"
                               " (default: AutoAlpha.max_ppl_ratio)"
    )] = None
    calib_limit: Annotated[int | None, typer.Option(
        min=1, help="--alpha auto: calibration questions per category (default: AutoAlpha.limit)"
    )] = None
    candidates: Annotated[list[str] | None, typer.Option(
        "--candidate", "--candidates", callback=split_commas,
        help="--alpha auto: an alpha tried; repeat for several"
             " (default: AutoAlpha.candidates)")] = None

    def given(self) -> dict[str, Any]:
        """The AutoAlpha fields these options set."""
        tried = numbers(self.candidates, "--candidates")
        return given(target_eps=self.target_eps, max_ppl_ratio=self.max_ppl_ratio,
                     limit=self.calib_limit, candidates=tuple(tried) if tried else None)
