"""Commands that move vectors between tools: export (llama.cpp GGUF) and import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emosteer.cli.common import console, plain, writable_folder
from emosteer.cli.options import OutFileOpt, finite, given, utf8
from emosteer.errors import BadInputError

OverwriteOpt = Annotated[bool, typer.Option(
    help="replace the --out file if it exists (refused otherwise)")]


def refuse_overwrite(out: Path, overwrite: bool) -> None:
    """Raise unless `out` is not an existing file, or overwrite is True.

    Example:
        refuse_overwrite(Path("joy.gguf"), overwrite=False)
    """
    if out.is_file() and not overwrite:
        raise BadInputError(f"{out} already exists: pass --overwrite to replace it, or "
                            "choose another --out")


def export(
    file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="an emosteer vector file (.safetensors)")],
    out: OutFileOpt,
    fmt: Annotated[str, typer.Option(
        "--format", help="gguf: llama.cpp control vector (repeng reads it)")] = "gguf",
    scale: Annotated[float | None, typer.Option(
        parser=finite, help="multiply the vector (llama.cpp can also scale it with "
                            "--control-vector-scaled FILE:SCALE)"
                            " (default: export_gguf's scale)")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a vector in another tool's layout.

    Example: [bold]emosteer export vectors/joy.safetensors --out joy.gguf[/bold], then
    [bold]llama-cli -m model.gguf --control-vector joy.gguf[/bold]
    """
    from emosteer.interop import export_gguf
    from emosteer.vectors import EmotionVector

    if fmt != "gguf":
        raise BadInputError(f"unknown --format {fmt!r}: use gguf")
    refuse_overwrite(out, overwrite)
    writable_folder(out.parent)
    vector = EmotionVector.load(file)
    export_gguf(vector, out, **given(scale=scale))
    note = (" (read at the attention output; llama.cpp adds it to the residual stream after "
            "each layer, and layer 0 is dropped: see docs/serving.md)"
            if vector.site == "attn" else "")
    console.print(f"wrote {plain(out)}: llama.cpp control vector of {plain(repr(vector.emotion))}, "
                  f"{len([k for k in vector.layers if k >= 1])} layers{note}")


def import_(
    file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="a llama.cpp control vector (.gguf), e.g. from "
                                          "repeng's export_gguf")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", dir_okay=False, help="the emosteer vector file to write")],
    emotion: Annotated[str | None, typer.Option(
        callback=utf8, help="name to record (default: the file's)")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Read another tool's vector file into an emosteer vector (.safetensors).

    Example: [bold]emosteer import calm.gguf --out vectors/calm.safetensors[/bold]
    """
    from emosteer.interop import read_gguf

    refuse_overwrite(out, overwrite)
    writable_folder(out.parent)
    vector = read_gguf(file)
    if emotion:
        vector = vector.renamed(emotion)
    vector.save(out)
    console.print(f"wrote {plain(out)}: {plain(repr(vector.emotion))}, {len(vector.layers)} "
                  f"layers ({vector.layers[0]}..{vector.layers[-1]}), site {plain(vector.site)}, "
                  f"for {plain(vector.meta.get('architecture'))} models of width "
                  f"{vector.hidden_size}")
