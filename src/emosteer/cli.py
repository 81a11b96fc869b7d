"""emosteer command line: parse arguments, call the library, print. Heavy imports stay inside."""

from __future__ import annotations

import sys
from pathlib import Path

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
    limit: int | None = typer.Option(None, help="queries per emotion (seeded sample); "
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
    vector: Path | None = typer.Option(None, help="a vector file"),
    mix: str | None = typer.Option(None, help="emotions and weights, e.g. joy=1,anger=0.5"),
    vectors_dir: Path = typer.Option(Path("vectors"),
                                     help="where --mix finds <emotion>.safetensors"),
    circuit: Path | None = typer.Option(None, help="a circuit file from `emosteer discover`"),
    emotion: str | None = typer.Option(None, help="with --circuit: the emotion to express"),
    alpha: list[float] = typer.Option([1.0], help="steering (or circuit) strength; repeat to "
                                                  "compare"),
    layers: str | None = typer.Option(None, help="comma-separated layer indices "
                                                    "(default: all in the vector)"),
    positions: str = typer.Option("all", help="all, or generated (newest token only)"),
    system: str | None = typer.Option(None, help="a system prompt"),
    max_new_tokens: int = 64,
    greedy: bool = False,
    seed: int = 0,
    force: bool = typer.Option(False, help="use a vector made for another model id"),
) -> None:
    """Answer questions steered by a vector or a mix of emotions.

    Example: [bold]emosteer generate "How was your day?" --mix joy=1.5 --alpha 0 --alpha 1[/bold]

    Through a circuit: [bold]emosteer generate "The bus is late again." --circuit
    circuits/circuit.safetensors --emotion fear --alpha 1[/bold]
    """
    from rich.table import Table

    from emosteer.errors import BadInputError
    from emosteer.generation import generate_text
    from emosteer.steering import check_alpha
    from emosteer.vectors import EmotionVector
    from emosteer.vectors import mix as mix_vectors

    if sum(x is not None for x in (vector, mix, circuit)) != 1:
        raise BadInputError("pass exactly one of --vector FILE, --mix joy=1,anger=0.5 or "
                            "--circuit FILE --emotion NAME")
    alphas = [check_alpha(a) for a in alpha]
    cfg = _generation(max_new_tokens, greedy, seed, 8)
    if circuit is not None:
        _generate_by_circuit(questions, model, circuit, emotion, alphas, system, cfg,
                             positions, force)
        return
    steering = (EmotionVector.load(vector) if vector is not None
                else mix_vectors(_vectors_in(vectors_dir), _parse_mix(mix or "")))
    chosen = "all" if layers is None else [int(x) for x in _csv(layers)]
    m, tok = _load(model)
    table = Table("question", "alpha", f"answer steered by {steering.emotion}", show_lines=True)
    for a in alphas:
        answers = generate_text(m, tok, questions, steering, a, system=system, cfg=cfg,
                                layers=chosen, positions=positions, allow_other_model=force)
        for q, text in zip(questions, answers, strict=True):
            table.add_row(q, f"{a:g}", text)
    console.print(table)


def _generate_by_circuit(questions, model, path, emotion, strengths, system, cfg, positions,
                         force) -> None:
    from rich.table import Table

    from emosteer.circuits import EmotionCircuit, modulate
    from emosteer.errors import BadInputError
    from emosteer.generation import generate_text

    circuit = EmotionCircuit.load(path)
    if emotion is None:
        raise BadInputError(f"--circuit needs --emotion: one of {', '.join(circuit.emotions)}")
    circuit.of(emotion)  # an unknown emotion fails before the model loads
    m, tok = _load(model)
    table = Table("question", "strength", f"answer through the {emotion} circuit",
                  show_lines=True)
    for strength in strengths:
        with modulate(m, circuit, emotion, strength, positions=positions,
                      allow_other_model=force):
            answers = generate_text(m, tok, questions, system=system, cfg=cfg)
        for q, text in zip(questions, answers, strict=True):
            table.add_row(q, f"{strength:g}", text)
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
    api_key: str | None = typer.Option(None, envvar="EMOSTEER_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1/*"),
    max_tokens: int = typer.Option(512, help="cap on max_tokens per request"),
    max_batch: int = typer.Option(8, help="concurrent requests per forward pass"),
    batch_window: float = typer.Option(0.01, help="seconds a request waits for batch-mates"),
    force: bool = typer.Option(False, help="accept vectors made for another model id"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's "
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
    emotion: str | None = typer.Option(None, help="name to record (default: the file's)"),
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


@app.command()
def classify(
    texts: list[str] | None = typer.Argument(None, help="texts; none: one per stdin line"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    judge: str = typer.Option("embedded", help="embedded, hf:<model id> or "
                                               "openai:<base url>#<model>"),
) -> None:
    """Say which emotion each text expresses, with the probability of each label.

    Labels: joy, anger, sadness, fear, disgust, surprise, neutral.

    Example: [bold]emosteer classify "I can't believe they cancelled again!" --json[/bold]
    """
    import json

    from emosteer.errors import BadInputError
    from emosteer.evaluate.judges import load_judge

    items = list(texts or []) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        raise BadInputError("no text to classify: pass texts as arguments or lines on stdin")
    ratings = load_judge(judge).rate(items, items)
    if as_json:
        for r in ratings:
            print(json.dumps({"label": r.label, "probs": {k: round(v, 4)
                                                          for k, v in r.probs.items()}}))
        return
    from rich.table import Table

    table = Table("text", "label", "probabilities (top 3)")
    for text, r in zip(items, ratings, strict=True):
        top = sorted(r.probs.items(), key=lambda kv: -kv[1])[:3]
        table.add_row(text, r.label, ", ".join(f"{k} {v:.2f}" for k, v in top))
    console.print(table)


@app.command()
def discover(
    model: str = MODEL,
    out: Path = typer.Option(Path("circuits"), help="folder for the circuit, directions, "
                                                    "vectors, plots and report.md"),
    emotions: str = typer.Option("anger,sadness,joy,fear,surprise,disgust",
                                 help="comma-separated"),
    skeletons: int = typer.Option(30, help="SEV discovery skeletons (x 3 valences), seeded; "
                                           "0: all"),
    test_skeletons: int = typer.Option(30, help="held-out SEV skeletons for the causal checks"),
    budget: int = typer.Option(128, help="components per emotion in the circuit"),
    ks: str = typer.Option("1,4,16,64,256", help="components ablated/enhanced in the checks"),
    max_new_tokens: int = typer.Option(40, help="answer length for the judge"),
    batch_size: int = 16,
    seed: int = 0,
) -> None:
    """Find the heads and neurons that carry each emotion (SEV dataset) and save a circuit.

    Example: [bold]emosteer discover --skeletons 10 --test-skeletons 10 --out circuits/[/bold]
    """
    from rich.table import Table

    from emosteer.circuits.discover import DiscoverConfig, save
    from emosteer.circuits.discover import discover as run
    from emosteer.errors import BadInputError

    try:
        k_values = tuple(int(k) for k in _csv(ks))
    except ValueError:
        raise BadInputError(f"bad --ks {ks!r}: write whole numbers, e.g. 1,4,16") from None
    cfg = DiscoverConfig(emotions=tuple(_csv(emotions)), skeletons=skeletons or None,
                         test_skeletons=test_skeletons or None, budget=budget, ks=k_values,
                         seed=seed, generation=_generation(max_new_tokens, False, seed,
                                                           batch_size))
    m, tok = _load(model)
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


experiment_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                             help="The paper's experiments on emotion_query_plus, with "
                                  "tables, plots and an HTML report.\n\nExample: [bold]emosteer "
                                  "experiment alpha-sweep --limit 5[/bold]")
app.add_typer(experiment_app, name="experiment")

VECTORS_DIR = typer.Option(Path("vectors"), help="<emotion>.safetensors and base.safetensors; "
                                                 "extracted there first if missing")
EXTRACT_LIMIT = typer.Option(40, help="extraction queries per emotion when vectors are missing")
LIMIT = typer.Option(5, help="evaluation questions per category (5 emotions + neutral), seeded")
JUDGE = typer.Option("embedded", help="embedded (offline), hf:<model id> (e.g. "
                                      "hf:facebook/bart-large-mnli) or openai:<base url>#<model>")
TOPIC = typer.Option("embedding", help="embedding (MiniLM, offline) or judge (an openai: judge)")
METRICS = typer.Option("ppl,topic,eps,eas,tec", help="comma-separated, from the registry")
PPL_MODEL = typer.Option(None, help="reference LM for perplexity (default: the model, unsteered)")
EMOTIONS_OPT = typer.Option("joy,anger,sadness,fear,disgust", help="comma-separated")
ALPHAS = typer.Option("-1,0,1,2,4", "--alphas", "--alpha",
                      help="comma-separated; 'auto' adds the alpha calibrated on the "
                           "calibration split, e.g. --alpha auto or --alphas=-1,0,1,2,auto")


def _experiment(model: str, out: Path, emotions: str, limit: int, metrics: str, judge: str,
                topic: str, ppl_model: str | None, max_new_tokens: int, batch_size: int,
                seed: int, alphas: str = "0", auto: dict | None = None):
    """(runner, model, tokenizer) for an experiment command."""
    from dataclasses import replace as _replace

    from emosteer.errors import BadInputError
    from emosteer.evaluate.metrics import get_metrics
    from emosteer.evaluate.runner import AutoAlpha, EvalConfig, Runner
    from emosteer.generation import GenerateConfig
    from emosteer.steering import check_alpha

    get_metrics(_csv(metrics))  # fail on a typo before loading anything
    values = [a for a in _csv(alphas) if a != "auto"]
    try:
        numbers = tuple(check_alpha(float(a)) for a in values)
    except ValueError:
        raise BadInputError(f"bad --alphas {alphas!r}: write numbers and 'auto', e.g. "
                            "--alphas=-1,0,1,2,4,auto") from None
    cfg = EvalConfig(emotions=tuple(_csv(emotions)), alphas=numbers, limit=limit,
                     metrics=tuple(_csv(metrics)), judge=judge, topic=topic, seed=seed,
                     generation=GenerateConfig(max_new_tokens=max_new_tokens, seed=seed,
                                               batch_size=batch_size))
    if auto:
        cfg = _replace(cfg, auto=AutoAlpha(**auto))
    if judge != "embedded":
        from emosteer.evaluate.judges import load_judge

        load_judge(judge)  # a bad spec fails before the model loads
    m, tok = _load(model)
    ppl = None
    if ppl_model:
        from emosteer.evaluate.scorers import Perplexity

        ppl = Perplexity(*_load(ppl_model))
    return Runner(m, tok, cfg, out, ppl=ppl), m, tok


def _floats(text: str, name: str) -> tuple[float, ...]:
    from emosteer.errors import BadInputError

    try:
        return tuple(float(x) for x in _csv(text))
    except ValueError:
        raise BadInputError(f"bad --{name} {text!r}: write numbers, e.g. 1,2,3") from None


def _experiment_vectors(runner, model: str, folder: Path, extract_limit: int,
                        need_base: bool = False) -> dict:
    from emosteer.vectors import EmotionVector

    wanted = list(runner.cfg.emotions) + (["base"] if need_base else [])
    files = {name: folder / f"{name}.safetensors" for name in wanted}
    if all(f.is_file() for f in files.values()):
        vectors = {name: EmotionVector.load(f) for name, f in files.items()}
        if (folder / "base.safetensors").is_file():
            vectors.setdefault("base", EmotionVector.load(folder / "base.safetensors"))
        return vectors
    from emosteer.extraction import ExtractConfig
    from emosteer.extraction import extract as run

    console.print(f"no vectors in {folder}: extracting {', '.join(runner.cfg.emotions)} from "
                  f"{extract_limit} emotion_query questions each (never evaluated on)")
    result = run(runner.model, runner.tokenizer,
                 ExtractConfig(emotions=tuple(runner.cfg.emotions), limit=extract_limit))
    folder.mkdir(parents=True, exist_ok=True)
    for name, vector in result.vectors.items():
        vector.save(folder / f"{name}.safetensors")
    return dict(result.vectors)


def _finish(result, what: str) -> None:
    from rich.table import Table

    from emosteer.evaluate.report import fmt, mean_rows

    metrics = [m for m in ("ppl", "topic", "eps", "eas", "tec") if m in result.rows[0]]
    rows = result.rows if what == "mix" else mean_rows(result.rows, metrics)
    scope = "per cell" if what == "mix" else "mean over emotions"
    table = Table("row", "target", *metrics, title=f"{what} ({scope})")
    for r in rows:
        table.add_row(f"{r['variant']} {r['label']}", r["target"],
                      *[fmt(r.get(m), m) for m in metrics])
    console.print(table)
    console.print(f"report: {result.files['html']} (markdown: {result.files['markdown']}, "
                  f"rows: {result.files['summary']})")


def _resumable(runner):
    """Re-raise an error with where the results kept so far are."""
    from contextlib import contextmanager

    from emosteer.errors import EmosteerError

    @contextmanager
    def guard():
        try:
            yield
        except EmosteerError as err:
            raise type(err)(f"{err} (answers and scores so far are kept in {runner.out}/; "
                            "rerun the same command to resume)") from err

    return guard()


@experiment_app.command("alpha-sweep")
def experiment_alpha_sweep(
    model: str = MODEL,
    vectors_dir: Path = VECTORS_DIR,
    extract_limit: int = EXTRACT_LIMIT,
    emotions: str = EMOTIONS_OPT,
    alphas: str = ALPHAS,
    variants: str = typer.Option("raw", help="raw (the paper) and/or centered (vector minus "
                                             "EV_base), comma-separated"),
    prompting: bool = typer.Option(True, help="add the system-prompt baseline rows"),
    limit: int = LIMIT,
    metrics: str = METRICS,
    judge: str = JUDGE,
    topic: str = TOPIC,
    ppl_model: str | None = PPL_MODEL,
    target_eps: float = typer.Option(0.5, help="--alpha auto: EPS to reach"),
    max_ppl_ratio: float = typer.Option(1.5, help="--alpha auto: PPL bound, x unsteered"),
    calib_limit: int = typer.Option(4, help="--alpha auto: calibration questions per category"),
    candidates: str = typer.Option("0.5,1,1.5,2,3,4", help="--alpha auto: alphas tried"),
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    out: Path = typer.Option(Path("runs/alpha-sweep"), help="results, caches and report"),
) -> None:
    """Each emotion's vector at alphas -1, 0, 1, 2, 4: PPL, topic, EPS, EAS, TEC per emotion.

    Example: [bold]emosteer experiment alpha-sweep --limit 5 --variants raw,centered[/bold]
    """
    from emosteer.evaluate.experiments import alpha_sweep

    runner, _, _ = _experiment(model, out, emotions, limit, metrics, judge, topic, ppl_model,
                               max_new_tokens, batch_size, seed, alphas,
                               auto={"target_eps": target_eps, "max_ppl_ratio": max_ppl_ratio,
                                     "limit": calib_limit,
                                     "candidates": _floats(candidates, "candidates")})
    vectors = _experiment_vectors(runner, model, vectors_dir, extract_limit,
                                  need_base="centered" in variants)
    with _resumable(runner):
        result = alpha_sweep(runner, vectors, tuple(_csv(variants)), prompting,
                             auto="auto" in _csv(alphas))
    _finish(result, "alpha-sweep")


@experiment_app.command("mix")
def experiment_mix(
    pair: str = typer.Option("joy,sadness", help="two emotions"),
    weights: str = typer.Option("0,1,2", help="weights tried for each, comma-separated"),
    model: str = MODEL,
    vectors_dir: Path = VECTORS_DIR,
    extract_limit: int = EXTRACT_LIMIT,
    limit: int = LIMIT,
    metrics: str = METRICS,
    judge: str = JUDGE,
    topic: str = TOPIC,
    ppl_model: str | None = PPL_MODEL,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    out: Path = typer.Option(Path("runs/mix"), help="results, caches and report"),
) -> None:
    """Two emotions mixed over a grid of weights: do their effects add up?

    Example: [bold]emosteer experiment mix --pair joy,anger --weights 0,1,2[/bold]
    """
    from emosteer.errors import BadInputError
    from emosteer.evaluate.experiments import mix_experiment

    names = _csv(pair)
    if len(names) != 2:
        raise BadInputError(f"--pair takes two emotions, e.g. joy,sadness (got {pair!r})")
    try:
        grid = [float(w) for w in _csv(weights)]
    except ValueError:
        raise BadInputError(f"bad --weights {weights!r}: write numbers, e.g. 0,1,2") from None
    if 0.0 not in grid:
        grid = [0.0, *grid]  # the additivity gap needs each emotion alone
    runner, _, _ = _experiment(model, out, pair, limit, metrics, judge, topic, ppl_model,
                               max_new_tokens, batch_size, seed)
    vectors = _experiment_vectors(runner, model, vectors_dir, extract_limit)
    with _resumable(runner):
        result = mix_experiment(runner, vectors, names[0], names[1], grid)
    _finish(result, "mix")


@experiment_app.command("base")
def experiment_base(
    model: str = MODEL,
    vectors_dir: Path = VECTORS_DIR,
    extract_limit: int = EXTRACT_LIMIT,
    alphas: str = typer.Option("-1,0,1,2,4", "--alphas", help="comma-separated"),
    limit: int = LIMIT,
    metrics: str = METRICS,
    judge: str = JUDGE,
    topic: str = TOPIC,
    ppl_model: str | None = PPL_MODEL,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    out: Path = typer.Option(Path("runs/base"), help="results, caches and report"),
) -> None:
    """EV_base (the mean of the emotion vectors) at each alpha: emotion in general, and which.

    Example: [bold]emosteer experiment base --alphas=-1,0,1,2[/bold]
    """
    from emosteer.evaluate.experiments import base

    runner, _, _ = _experiment(model, out, "joy,anger,sadness,fear,disgust", limit, metrics,
                               judge, topic, ppl_model, max_new_tokens, batch_size, seed, alphas)
    vectors = _experiment_vectors(runner, model, vectors_dir, extract_limit, need_base=True)
    with _resumable(runner):
        result = base(runner, vectors)
    _finish(result, "base")


@experiment_app.command("prompting")
def experiment_prompting(
    model: str = MODEL,
    emotions: str = EMOTIONS_OPT,
    limit: int = LIMIT,
    metrics: str = METRICS,
    judge: str = JUDGE,
    topic: str = TOPIC,
    ppl_model: str | None = PPL_MODEL,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    out: Path = typer.Option(Path("runs/prompting"), help="results, caches and report"),
) -> None:
    """The baseline: the emotion asked for in the system prompt, no vector.

    Example: [bold]emosteer experiment prompting --limit 5[/bold]
    """
    from emosteer.evaluate.experiments import prompting

    runner, _, _ = _experiment(model, out, emotions, limit, metrics, judge, topic, ppl_model,
                               max_new_tokens, batch_size, seed)
    with _resumable(runner):
        result = prompting(runner)
    _finish(result, "prompting")


@experiment_app.command("compare")
def experiment_compare(
    model: str = MODEL,
    circuits: Path = typer.Option(Path("circuits"), help="the folder `emosteer discover` wrote"),
    test_skeletons: int = typer.Option(20, help="held-out SEV test skeletons (x 3 valences); "
                                                "0: all"),
    calibration_skeletons: int = typer.Option(5, help="discovery skeletons for choosing "
                                                      "alpha and strength"),
    alphas: str = typer.Option("0.5,0.75,1,1.5", help="steering alphas tried (per emotion)"),
    strengths: str = typer.Option("0.5,0.75,1,1.5", help="circuit strengths tried (per "
                                                            "emotion)"),
    max_new_tokens: int = 40,
    batch_size: int = 16,
    seed: int = 0,
) -> None:
    """Prompting vs emotion-vector steering vs circuit modulation on held-out SEV scenes.

    Example: [bold]emosteer discover && emosteer experiment compare[/bold]
    """
    import json

    from emosteer.circuits import EmotionCircuit
    from emosteer.errors import BadInputError
    from emosteer.evaluate.compare import CompareConfig, compare, markdown
    from emosteer.vectors import EmotionVector

    path = circuits / "circuit.safetensors"
    if not path.is_file():
        raise BadInputError(f"no circuit in {circuits}/: run `emosteer discover --out "
                            f"{circuits}` first")
    circuit = EmotionCircuit.load(path)
    vectors = {e: EmotionVector.load(circuits / "vectors" / f"{e}.safetensors")
               for e in circuit.emotions}
    cfg = CompareConfig(emotions=tuple(circuit.emotions), test_skeletons=test_skeletons or None,
                        calibration_skeletons=calibration_skeletons,
                        alphas=tuple(_floats(alphas, "alphas")),
                        strengths=tuple(_floats(strengths, "strengths")), seed=seed,
                        generation=_generation(max_new_tokens, False, seed, batch_size))
    m, tok = _load(model)
    result = compare(m, tok, circuit, vectors, cfg)
    table = markdown(result)
    (circuits / "compare.json").write_text(json.dumps(result, indent=1))
    (circuits / "compare.md").write_text(table + "\n", encoding="utf-8")
    console.print(table)
    console.print(f"chosen on discovery scenes: {result['calibration']['chosen']}; "
                  f"{result['seconds']:.0f} s; rows: {circuits / 'compare.json'}")


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
