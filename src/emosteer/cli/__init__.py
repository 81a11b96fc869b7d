"""emosteer command line: parse arguments, call the library, print. Heavy imports stay inside.

One module per command group; this one holds the command table and `main()`:

vectors.py   extract, info
demo.py      demo (extract, then every emotion steering unseen questions, judged)
generate.py  generate (a vector, a mix or a circuit)
meter.py     meter (per-token emotion readings of a text), fit-meter
evaluate.py  classify; experiment alpha-sweep, mix, base, prompting
circuits.py  discover; experiment compare
frontier.py  experiment frontier (the method search)
serve.py     serve
interop.py   export, import
options.py   the shared option aliases and option dataclasses (defaults: the library's)
common.py    printing, model loading, vector folders, safe saving

Bad input, in an option or from the library (an EmosteerError), is one line on stderr and
exit code 2; `emosteer --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.text import Text

from emosteer.cli import (
    circuits,
    demo,
    evaluate,
    frontier,
    generate,
    interop,
    meter,
    serve,
    vectors,
)
from emosteer.cli.common import clean, err_console
from emosteer.errors import EmosteerError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help="Find, control and measure emotion inside language models.\n\n"
         "Example: [bold]emosteer demo[/bold]  (extract five emotion vectors on the bundled "
         "model and show steered answers)\n\n"
         "List options repeat ([bold]--emotion joy --emotion anger[/bold]); a comma inside a "
         "value is split too ([bold]--emotions joy,anger[/bold]). Options left out take the "
         "library's defaults (GenerateConfig, ExtractConfig, EvalConfig...). Add --debug to "
         "see a traceback.")
app.command()(vectors.extract)
app.command()(generate.generate)
app.command()(meter.meter)
app.command("fit-meter")(meter.fit_meter)
app.command()(vectors.info)
app.command()(demo.demo)
app.command()(serve.serve)
app.command()(interop.export)
app.command("import")(interop.import_)
app.command()(evaluate.classify)
app.command()(circuits.discover)

experiment_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="rich",
    help="The paper's experiments on emotion_query_plus, with tables, plots and an HTML "
         "report.\n\nExample: [bold]emosteer experiment alpha-sweep --limit 5[/bold]")
experiment_app.command("alpha-sweep")(evaluate.alpha_sweep)
experiment_app.command("mix")(evaluate.mix)
experiment_app.command("base")(evaluate.base)
experiment_app.command("prompting")(evaluate.prompting)
experiment_app.command("compare")(circuits.compare)
experiment_app.command("frontier")(frontier.frontier)
app.add_typer(experiment_app, name="experiment")

# typer's usage errors (a bad option value, a missing argument): click's ClickException,
# which newer typer versions vendor; BadParameter is exported by every version
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str, code: int = 2) -> None:
    err_console.print(Text.assemble(("error:", "red"), " ", clean(" ".join(message.split()))),
                      soft_wrap=True)
    sys.exit(code)


def _usage_error(err: Any) -> None:
    """A typer usage error on one line, with where to look."""
    code = getattr(err, "exit_code", 2)
    if type(err).__name__ == "NoArgsIsHelpError":  # `emosteer` alone: the help is printed
        sys.exit(code)
    ctx = getattr(err, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    _fail(f"{err.format_message()}{hint}", code)


def main(argv: list[str] | None = None) -> None:
    """Run the `emosteer` command: bad input prints one line and exits with code 2.

    Args:
        argv: the arguments (default: sys.argv[1:]); `--debug` anywhere shows tracebacks.

    Example:
        main(["info", "vectors/joy.safetensors"])
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="emosteer", standalone_mode=False)
    except _USAGE_ERROR as err:
        if debug:
            raise
        _usage_error(err)
    except EmosteerError as err:
        if debug:
            raise
        _fail(str(err))
    sys.exit(code if isinstance(code, int) else 0)
