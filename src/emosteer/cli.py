"""emosteer command line: parse arguments, call the library, print. Heavy imports stay inside."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="Find, control and measure emotion inside language models.\n\n"
                       "Example: [bold]emosteer demo[/bold]  (extract five emotion vectors "
                       "on the bundled model and show steered answers)")
console = Console()
err_console = Console(stderr=True)

MODEL = typer.Option("default", "--model", "-m",
                     help="'default' (bundled SmolLM2-135M-Instruct), a hub id, a folder or a "
                          ".gguf file")
DEMO_QUESTIONS = (  # from emotion_query_plus, which extraction never reads
    "eqp-neutral-003", "eqp-joy-007", "eqp-anger-011")


def _generation(max_new_tokens: int, greedy: bool, seed: int, batch_size: int):
    from emosteer.generation import GenerateConfig

    return GenerateConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, seed=seed,
                          batch_size=batch_size)


def _load(model: str):
    from emosteer.models import load_model

    with console.status(f"loading model {model} ..."):
        return load_model(model)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@app.command()
def extract(
    model: str = MODEL,
    emotions: str = typer.Option("joy,anger,sadness,fear,disgust", help="comma-separated"),
    limit: Optional[int] = typer.Option(None, help="queries per emotion (seeded sample); "
                                                   "default all 100"),
    out: Path = typer.Option(Path("vectors"), help="folder for <emotion>.safetensors"),
    method: str = typer.Option("mean_diff", help="mean_diff (paper) or pca"),
    site: str = typer.Option("attn", help="attn (self-attention output, as the authors) or "
                                          "residual (decoder layer output)"),
    positions: str = typer.Option("response", help="response (paper: response tokens) or all"),
    context: str = typer.Option("own", help="own: each response under its own prompt; neutral: "
                                            "re-read the emotional response under the neutral "
                                            "prompt"),
    center: bool = typer.Option(False, help="subtract EV_base (mean of the emotions) from each"),
    max_new_tokens: int = typer.Option(48, help="response length read per query"),
    greedy: bool = typer.Option(False, help="greedy decoding instead of sampling "
                                            "(temperature 0.6, top_p 0.9)"),
    seed: int = 0,
    batch_size: int = typer.Option(8, help="queries per batch (each query runs twice)"),
) -> None:
    """Extract emotion vectors with the paper's method and save them as safetensors.

    Example: [bold]emosteer extract --emotions joy,anger --limit 40 --out vectors/[/bold]
    """
    import json

    from emosteer.extraction import ExtractConfig
    from emosteer.extraction import extract as run

    cfg = ExtractConfig(emotions=tuple(_csv(emotions)), limit=limit, site=site,
                        positions=positions, context=context, method=method, center=center,
                        generation=_generation(max_new_tokens, greedy, seed, batch_size))
    m, tok = _load(model)
    result = run(m, tok, cfg)
    out.mkdir(parents=True, exist_ok=True)
    for name, vector in result.vectors.items():
        vector.save(out / f"{name}.safetensors")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in result.samples)
    n = sum(result.used.values())
    console.print(f"extracted {', '.join(result.vectors)} from {n} queries in "
                  f"{result.seconds:.0f} s ({result.seconds / max(n, 1):.2f} s per query) -> "
                  f"{out}/ (responses in {out}/samples.jsonl)")


def _vectors_in(folder: Path) -> dict:
    from emosteer.errors import VectorFileError
    from emosteer.vectors import EmotionVector

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise VectorFileError(f"no vector files in {folder}: run `emosteer extract --out "
                              f"{folder}` first, or pass --vectors-dir")
    return {f.stem: EmotionVector.load(f) for f in files}


def _parse_mix(text: str) -> dict[str, float]:
    from emosteer.errors import BadInputError

    weights = {}
    for item in _csv(text):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise BadInputError(f"bad --mix item {item!r}: write name=weight, e.g. "
                                "--mix joy=1,anger=0.5") from None
    return weights


@app.command()
def generate(
    questions: list[str] = typer.Argument(..., help="one or more questions"),
    model: str = MODEL,
    vector: Optional[Path] = typer.Option(None, help="a vector file"),
    mix: Optional[str] = typer.Option(None, help="emotions and weights, e.g. joy=1,anger=0.5"),
    vectors_dir: Path = typer.Option(Path("vectors"), help="where --mix finds <emotion>.safetensors"),
    alpha: list[float] = typer.Option([1.0], help="steering strength; repeat to compare"),
    layers: Optional[str] = typer.Option(None, help="comma-separated layer indices "
                                                    "(default: all in the vector)"),
    positions: str = typer.Option("all", help="all, or generated (newest token only)"),
    system: Optional[str] = typer.Option(None, help="a system prompt"),
    max_new_tokens: int = 64,
    greedy: bool = False,
    seed: int = 0,
    force: bool = typer.Option(False, help="use a vector made for another model id"),
) -> None:
    """Answer questions steered by a vector or a mix of emotions.

    Example: [bold]emosteer generate "How was your day?" --mix joy=1.5 --alpha 0 --alpha 1[/bold]
    """
    from rich.table import Table

    from emosteer.errors import BadInputError
    from emosteer.generation import generate_text
    from emosteer.steering import check_alpha
    from emosteer.vectors import EmotionVector
    from emosteer.vectors import mix as mix_vectors

    if (vector is None) == (mix is None):
        raise BadInputError("pass exactly one of --vector FILE or --mix joy=1,anger=0.5")
    alphas = [check_alpha(a) for a in alpha]
    steering = (EmotionVector.load(vector) if vector is not None
                else mix_vectors(_vectors_in(vectors_dir), _parse_mix(mix or "")))
    chosen = "all" if layers is None else [int(x) for x in _csv(layers)]
    m, tok = _load(model)
    cfg = _generation(max_new_tokens, greedy, seed, 8)
    table = Table("question", "alpha", f"answer steered by {steering.emotion}", show_lines=True)
    for a in alphas:
        answers = generate_text(m, tok, questions, steering, a, system=system, cfg=cfg,
                                layers=chosen, positions=positions, allow_other_model=force)
        for q, text in zip(questions, answers):
            table.add_row(q, f"{a:g}", text)
    console.print(table)


@app.command()
def info(file: Path = typer.Argument(..., help="a vector file (.safetensors)")) -> None:
    """Show a vector file's metadata and per-layer norms.

    Example: [bold]emosteer info vectors/joy.safetensors[/bold]
    """
    from rich.table import Table

    from emosteer.vectors import EmotionVector

    vec = EmotionVector.load(file)
    table = Table("key", "value", title=str(file))
    for key, value in sorted(vec.meta.items()):
        table.add_row(key, value)
    norms = vec.norms()
    table.add_row("layers", f"{len(norms)} ({vec.layers[0]}..{vec.layers[-1]})")
    table.add_row("norm by layer", " ".join(f"{n:.2f}" for n in norms.values()))
    console.print(table)


@app.command()
def demo(
    model: str = MODEL,
    limit: int = typer.Option(40, help="extraction queries per emotion"),
    out: Path = typer.Option(Path("vectors"), help="folder for the vectors"),
    emotions: str = typer.Option("joy,sadness", help="emotions shown in the table"),
    alphas: str = typer.Option("-1,1,2", help="alphas shown in the table"),
) -> None:
    """Extract all five emotion vectors, then answer unseen questions steered and unsteered.

    Example: [bold]emosteer demo --limit 40[/bold]
    """
    from rich.table import Table

    from emosteer import data
    from emosteer.extraction import ExtractConfig
    from emosteer.extraction import extract as run
    from emosteer.generation import GenerateConfig, generate_text

    m, tok = _load(model)
    result = run(m, tok, ExtractConfig(limit=limit))
    out.mkdir(parents=True, exist_ok=True)
    for name, vec in result.vectors.items():
        vec.save(out / f"{name}.safetensors")
    n = sum(result.used.values())
    console.print(f"extracted 5 emotion vectors + base from {n} queries in "
                  f"{result.seconds:.0f} s -> {out}/")
    by_id = {q.id: q.question for q in data.load_queries("emotion_query_plus")}
    questions = [by_id[i] for i in DEMO_QUESTIONS]
    cfg = GenerateConfig(max_new_tokens=40)
    rows = [("unsteered", generate_text(m, tok, questions, cfg=cfg))]
    for emotion in _csv(emotions):
        if emotion not in result.vectors:
            from emosteer.errors import UnknownEmotionError

            raise UnknownEmotionError(f"unknown emotion {emotion!r}: choose from "
                                      f"{', '.join(result.vectors)}")
        for a in [float(x) for x in _csv(alphas)]:
            rows.append((f"{emotion} {a:+g}", generate_text(m, tok, questions,
                                                             result.vectors[emotion], a, cfg=cfg)))
    for i, question in enumerate(questions):
        table = Table("steering", "answer", title=f"[bold]{question}[/bold]", show_lines=True)
        for label, answers in rows:
            table.add_row(label, answers[i])
        console.print(table)


@app.command()
def serve(
    model: str = MODEL,
    vectors: Path = typer.Option(Path("vectors"), help="folder of <emotion>.safetensors; each "
                                                       "file stem is an emotion name"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback; 0.0.0.0 exposes it)"),
    port: int = 8000,
    api_key: Optional[str] = typer.Option(None, envvar="EMOSTEER_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1/*"),
    max_tokens: int = typer.Option(512, help="cap on max_tokens per request"),
    max_batch: int = typer.Option(8, help="concurrent requests per forward pass"),
    batch_window: float = typer.Option(0.01, help="seconds a request waits for batch-mates"),
    force: bool = typer.Option(False, help="accept vectors made for another model id"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's "
                                                     "choice); 1 helps on a busy machine"),
) -> None:
    """Serve an OpenAI-compatible API with per-request emotions, and a playground at /.

    Example: [bold]emosteer serve --vectors vectors/[/bold], then open http://127.0.0.1:8000/
    and call it with the openai client: extra_body={"emotion": {"joy": 1.5}}
    """
    try:
        import uvicorn

        from emosteer.server import ServeConfig, create_app
    except ImportError as err:
        from emosteer.errors import EmosteerError

        raise EmosteerError(f"the server needs the 'server' extra ({err.name} is missing): "
                            "pip install 'emosteer[server]'") from None
    found = _vectors_in(vectors)
    if threads:
        import torch

        torch.set_num_threads(threads)
    m, tok = _load(model)
    for vector in found.values():
        vector.check_model(m, allow_other_model=force)
    cfg = ServeConfig(host=host, port=port, api_key=api_key, max_tokens=max_tokens,
                      max_batch=max_batch, batch_window=batch_window)
    console.print(f"serving {model} with emotions {', '.join(found)} on http://{host}:{port}/ "
                  f"(playground at /, API at /v1){' with an API key' if api_key else ''}")
    uvicorn.run(create_app(m, tok, found, cfg), host=host, port=port, log_level="warning")


@app.command()
def export(
    file: Path = typer.Argument(..., help="an emosteer vector file (.safetensors)"),
    out: Path = typer.Option(..., "--out", "-o", help="the file to write, e.g. joy.gguf"),
    fmt: str = typer.Option("gguf", "--format", help="gguf: llama.cpp control vector (repeng "
                                                    "reads it)"),
    scale: float = typer.Option(1.0, help="multiply the vector (llama.cpp can also scale it "
                                          "with --control-vector-scaled FILE:SCALE)"),
) -> None:
    """Write a vector in another tool's layout.

    Example: [bold]emosteer export vectors/joy.safetensors --out joy.gguf[/bold], then
    [bold]llama-cli -m model.gguf --control-vector joy.gguf[/bold]
    """
    from emosteer.errors import BadInputError
    from emosteer.interop import export_gguf
    from emosteer.vectors import EmotionVector

    if fmt != "gguf":
        raise BadInputError(f"unknown --format {fmt!r}: use gguf")
    vector = EmotionVector.load(file)
    export_gguf(vector, out, scale=scale)
    note = (" (read at the attention output; llama.cpp adds it to the residual stream after "
            "each layer, and layer 0 is dropped: see docs/serving.md)"
            if vector.site == "attn" else "")
    console.print(f"wrote {out}: llama.cpp control vector of {vector.emotion!r}, "
                  f"{len([k for k in vector.layers if k >= 1])} layers{note}")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="a llama.cpp control vector (.gguf), e.g. from "
                                          "repeng's export_gguf"),
    out: Path = typer.Option(..., "--out", "-o", help="the emosteer vector file to write"),
    emotion: Optional[str] = typer.Option(None, help="name to record (default: the file's)"),
) -> None:
    """Read another tool's vector file into an emosteer vector (.safetensors).

    Example: [bold]emosteer import calm.gguf --out vectors/calm.safetensors[/bold]
    """
    from dataclasses import replace

    from emosteer.interop import read_gguf

    vector = read_gguf(file)
    if emotion:
        vector = replace(vector, meta={**vector.meta, "emotion": emotion})
    vector.save(out)
    console.print(f"wrote {out}: {vector.emotion!r}, {len(vector.layers)} layers "
                  f"({vector.layers[0]}..{vector.layers[-1]}), site {vector.site}, for "
                  f"{vector.meta.get('architecture')} models of width {vector.hidden_size}")


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    from emosteer.errors import EmosteerError

    try:
        app()
    except EmosteerError as err:
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
