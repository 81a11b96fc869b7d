"""Every option of every command, fed bad values: one line naming it, exit code 2, no traceback.

The cases are built from the commands' own declarations (their typer `Annotated` metadata),
so a new option is covered without editing this file; the rules below also make each new
number or path option declare what it accepts.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from types import NoneType, UnionType

import pytest
import typer
from typer.models import ArgumentInfo, OptionInfo

from emosteer.cli import app, main


def _commands(group: typer.Typer, path: tuple[str, ...] = ()):
    for info in group.registered_commands:
        yield (*path, info.name or info.callback.__name__.replace("_", "-")), info.callback
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance, (*path, sub.name))


def _base(hint) -> type:
    """int for `Annotated[int | None, ...]`, list for `list[str] | None`..."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not NoneType)
    return typing.get_origin(hint) or hint


def _params(callback):
    """(name, flag or None for an argument, base type, typer info, required) per parameter."""
    hints = typing.get_type_hints(callback, include_extras=True)
    for p in inspect.signature(callback).parameters.values():
        info = next(m for m in typing.get_args(hints[p.name])[1:]
                    if isinstance(m, OptionInfo | ArgumentInfo))
        flag = None
        if isinstance(info, OptionInfo):
            decls = [info.default, *(info.param_decls or ())]
            flag = next((d for d in decls if isinstance(d, str) and d.startswith("--")),
                        f"--{p.name.replace('_', '-')}")
        yield p.name, flag, _base(hints[p.name]), info, p.default is inspect.Parameter.empty


COMMANDS = list(_commands(app))


def _valid_required(callback, tmp: Path) -> tuple[list[str], list[str]]:
    """(arguments, options) that parse: what a bad value of another option needs beside it."""
    args, opts = [], []
    for _, flag, kind, info, required in _params(callback):
        if kind is bool:
            continue
        if flag == "--model":
            opts += [flag, str(tmp / "no-such-model")]  # an unrefused bad value fails fast
        elif required:
            value = str(tmp / "file.bin") if kind is Path else "hello"
            if kind is Path and not getattr(info, "exists", False):
                value = str(tmp / "new.out")
            (args.append(value) if flag is None else opts.extend([flag, value]))
    return args, opts


def _bad_values(name, kind, info, tmp: Path) -> list[tuple[str, str]]:
    """(value, what the message must say) for one parameter; [] for kinds left to commands."""
    if kind is int:
        assert info.min is not None, f"{name}: declare min= (and max= if there is one)"
        cases = [("abc", ""), (str(info.min - 1), "")]
        return cases + ([(str(info.max + 1), "")] if info.max is not None else [])
    if kind is float:
        assert info.parser is not None or None not in (info.min, info.max), (
            f"{name}: declare min= and max=, or parser=finite, so nan and inf are refused")
        cases = [("abc", ""), ("nan", ""), ("inf", ""), ("-inf", "")]
        cases += [(str(info.min - 1), "")] if info.min is not None else []
        return cases + ([(str(info.max + 1), "")] if info.max is not None else [])
    if kind is Path:
        assert info.dir_okay is False or info.file_okay is False, (
            f"{name}: declare dir_okay=False (a file) or file_okay=False (a folder)")
        cases = [(str(tmp / "a-folder"), "is a directory")] if info.dir_okay is False else []
        cases += [(str(tmp / "missing"), "does not exist")] if info.exists else []
        return cases + ([(str(tmp / "file.bin"), "is a file")] if not info.file_okay else [])
    return []


def _cases():
    for path, callback in COMMANDS:
        for name, flag, kind, info, _ in _params(callback):
            for value, said in _bad_values(name, kind, info, Path("TMP")):
                yield pytest.param(path, callback, name, flag, value, said,
                                   id=f"{' '.join(path)} {flag or name}={value}")


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "file.bin").write_bytes(b"not a vector")
    return tmp_path


@pytest.mark.parametrize(("path", "callback", "name", "flag", "value", "said"), list(_cases()))
def test_every_option_refuses_bad_values(path, callback, name, flag, value, said, tmp, capsys):
    value = value.replace("TMP", str(tmp))
    args, opts = _valid_required(callback, tmp)
    if flag is None:  # a positional argument: put the bad value in its place
        position = [n for n, f, _, _, r in _params(callback) if f is None and r].index(name)
        args[position] = value
    else:
        drop = {i for i, a in enumerate(opts) if a == flag} | {
            i + 1 for i, a in enumerate(opts) if a == flag}
        opts = [a for i, a in enumerate(opts) if i not in drop] + [flag, value]
    with pytest.raises(SystemExit) as stop:
        main([*path, *args, *opts])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert (flag or name) in err and said in err, err


def test_the_walk_covers_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"extract", "generate", "info", "demo", "serve", "export", "import", "classify",
            "discover", "experiment alpha-sweep", "experiment mix", "experiment base",
            "experiment prompting", "experiment compare"} <= names
    assert len(list(_cases())) > 100
