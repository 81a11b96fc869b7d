"""The serve command: an OpenAI-compatible API with per-request emotions, and a playground."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from emosteer.cli.common import console, load, vectors_in
from emosteer.cli.options import VECTORS, ForceOpt, ModelOpt, given, split_commas
from emosteer.errors import EmosteerError

if TYPE_CHECKING:
    from emosteer.vectors import EmotionVector


def served_vectors(folder: Path | None) -> dict[str, EmotionVector]:
    """The vectors to serve: the --vectors folder, else ./vectors.

    Example:
        served_vectors(Path("vectors"))  # {"joy": ..., "anger": ..., "base": ...}
    """
    # With no --vectors, this is the one place to fall back to the vectors shipped for the
    # bundled model (emosteer.vectors.load_vectors("default")) once the package ships them.
    return vectors_in(folder or VECTORS, "--vectors")


def serve(
    model: ModelOpt = "default",
    vectors: Annotated[Path | None, typer.Option(
        file_okay=False, help="folder of <emotion>.safetensors; each file stem is an emotion "
                              "name (default: vectors/)")] = None,
    host: Annotated[str | None, typer.Option(
        help="bind address (default: ServeConfig.host, loopback; 0.0.0.0 exposes it)")] = None,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="(default: ServeConfig.port)")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="EMOSTEER_API_KEY", show_envvar=True,
        help="require 'Authorization: Bearer KEY' on /v1/*; set $EMOSTEER_API_KEY instead, "
             "so the key does not show in `ps`")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        min=1, help="cap on max_tokens per request (default: ServeConfig.max_tokens)")] = None,
    max_batch: Annotated[int | None, typer.Option(
        min=1, help="concurrent requests per forward pass"
                    " (default: ServeConfig.max_batch)")] = None,
    batch_window: Annotated[float | None, typer.Option(
        min=0.0, max=60.0, help="seconds a request waits for batch-mates (default: "
                                "ServeConfig.batch_window)")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(
        min=1, help="largest request body; bigger ones get a 413 (default: "
                    "ServeConfig.max_body_bytes)")] = None,
    max_prompt_chars: Annotated[int | None, typer.Option(
        min=1, help="longest prompt in characters, checked before tokenizing (default: "
                    "ServeConfig.max_prompt_chars)")] = None,
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", callback=split_commas,
        help="a web page origin (e.g. http://localhost:3000) that may call /v1 besides the "
             "playground; repeat for several (docs/security.md)")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", callback=split_commas,
        help="a Host name besides localhost to answer on a loopback bind (e.g. a reverse "
             "proxy's); repeat for several (docs/security.md)")] = None,
    force: ForceOpt = False,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch CPU threads (default: torch's choice); 1 helps on a busy machine")
    ] = None,
) -> None:
    """Serve an OpenAI-compatible API with per-request emotions, and a playground at /.

    Example: [bold]emosteer serve --vectors vectors/[/bold], then open http://127.0.0.1:8000/
    and call it with the openai client: extra_body={"emotion": {"joy": 1.5}}
    """
    try:
        import uvicorn

        from emosteer.server import ServeConfig, create_app
    except ImportError as err:
        raise EmosteerError(f"the server needs the 'server' extra ({err.name} is missing): "
                            "pip install 'emosteer[server]'") from None
    found = served_vectors(vectors)
    cfg = ServeConfig(**given(
        host=host, port=port, api_key=api_key, max_tokens=max_tokens, max_batch=max_batch,
        batch_window=batch_window, max_body_bytes=max_body_bytes,
        max_prompt_chars=max_prompt_chars,
        allow_origins=tuple(allow_origin) if allow_origin else None,
        allowed_hosts=tuple(allow_host) if allow_host else None))
    if threads:
        import torch

        torch.set_num_threads(threads)
    m, tok = load(model)
    for vector in found.values():
        vector.check_model(m, allow_other_model=force)
    console.print(f"serving {model} with emotions {', '.join(found)} on "
                  f"http://{cfg.host}:{cfg.port}/ (playground at /, API at /v1)"
                  f"{' with an API key' if cfg.api_key else ''}")
    uvicorn.run(create_app(m, tok, found, cfg), host=cfg.host, port=cfg.port,
                log_level="warning")
