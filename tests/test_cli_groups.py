"""Option groups: `defaults` notes the config default in each help that has none."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Annotated

import typer

from emosteer.cli.options import EmotionsOpt, HeldOutSkeletonsOpt, OptionGroup, with_groups


@dataclass(frozen=True)
class _Group(OptionGroup):
    defaults = "SomeConfig"

    count: Annotated[int | None, typer.Option(min=1, help="how many")] = None
    held_out: HeldOutSkeletonsOpt = None
    emotions: EmotionsOpt = None


def _helps(func) -> dict[str, str]:
    hints = typing.get_type_hints(func, include_extras=True)
    return {name: typing.get_args(hints[name])[1].help
            for name in inspect.signature(func).parameters}


def test_a_group_with_defaults_names_each_default_once():
    @with_groups
    def command(group: _Group = _Group()) -> None:
        pass

    helps = _helps(command)
    assert helps["count"] == "how many (default: SomeConfig.count)"
    assert helps["held_out"].endswith("0: all (default: SomeConfig.held_out)")
    assert helps["emotions"].count("(default:") == 1  # the alias says its own default
    shared = typing.get_args(typing.get_type_hints(_Group, include_extras=True)["held_out"])[1]
    assert "(default:" not in shared.help  # the alias itself is left as it was


@dataclass(frozen=True)
class _Plain(OptionGroup):
    count: Annotated[int | None, typer.Option(min=1, help="how many")] = None


def test_a_group_without_defaults_keeps_its_helps():
    @with_groups
    def command(group: _Plain = _Plain()) -> None:
        pass

    assert _helps(command) == {"count": "how many"}
