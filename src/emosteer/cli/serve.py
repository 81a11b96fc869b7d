"""The serve command: an OpenAI-compatible API with per-request emotions, and a playground.

`--engine builtin` (the default) is emosteer's own server (emosteer.server); `--engine vllm`
runs vLLM's OpenAI server with emosteer's plugin (docs/vllm.md): the same "emotion" field
and playground, vLLM's batching and parallelism, its own options after `--`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emosteer.cli.common import console, load, plain, vectors_in
from emosteer.cli.engine import engine_name
from emosteer.cli.options import (
    VECTORS,
    ForceOpt,
    ModelOpt,
    OptionGroup,
    given,
    split_commas,
    with_groups,
)
from emosteer.errors import BadInputError, EmosteerError, VectorFileError

if TYPE_CHECKING:
    from emosteer.server import ServeConfig
    from emosteer.vectors import EmotionVector

VLLM_KEY_ENV = "VLLM_API_KEY"  # vLLM's server requires 'Bearer KEY' on /v1 when it is set
KEY_ENV = "EMOSTEER_API_KEY"  # --api-key's variable


def served_vectors(folder: Path | None) -> tuple[Path, dict[str, EmotionVector]]:
    """The folder to serve and its vectors: --vectors, else ./vectors when it holds vector
    files, else the vectors shipped for the bundled model (emosteer.load_vectors("default")).

    Example:
        served_vectors(Path("vectors"))  # (Path("vectors"), {"joy": ..., "base": ...})
    """
    if folder is not None or any(VECTORS.glob("*.safetensors")):
        chosen = folder or VECTORS
        return chosen, vectors_in(chosen, "--vectors")
    from emosteer.vectors import DEFAULT_VECTORS, load_vectors

    try:
        return DEFAULT_VECTORS, load_vectors("default")
    except VectorFileError:
        raise VectorFileError(f"no vector files in {VECTORS}/ and this install ships none: run "
                              f"`emosteer extract --out {VECTORS}` first, or pass the folder "
                              "with --vectors") from None


@dataclass(frozen=True)
class ServerOptions(OptionGroup):
    """How the server listens and what it accepts; None keeps ServeConfig's value. With
    --engine vllm only --host, --port and --api-key apply (vLLM's own options go after --).

    Example:
        ServerOptions(port=8001, max_batch=4).config()  # ServeConfig(port=8001, max_batch=4)
    """

    host: Annotated[str | None, typer.Option(
        help="bind address (default: ServeConfig.host, loopback; 0.0.0.0 exposes it)")] = None
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="(default: ServeConfig.port)")] = None
    api_key: Annotated[str | None, typer.Option(
        envvar=KEY_ENV, show_envvar=True,
        help="require 'Authorization: Bearer KEY' on /v1/*; set $EMOSTEER_API_KEY instead, "
             "so the key does not show in `ps`")] = None
    max_tokens: Annotated[int | None, typer.Option(
        min=1, help="cap on max_tokens per request (default: ServeConfig.max_tokens)")] = None
    max_batch: Annotated[int | None, typer.Option(
        min=1, help="concurrent requests per forward pass"
                    " (default: ServeConfig.max_batch)")] = None
    batch_window: Annotated[float | None, typer.Option(
        min=0.0, max=60.0, help="seconds a request waits for batch-mates (default: "
                                "ServeConfig.batch_window)")] = None
    max_body_bytes: Annotated[int | None, typer.Option(
        min=1, help="largest request body; bigger ones get a 413 (default: "
                    "ServeConfig.max_body_bytes)")] = None
    max_prompt_chars: Annotated[int | None, typer.Option(
        min=1, help="longest prompt in characters, checked before tokenizing (default: "
                    "ServeConfig.max_prompt_chars)")] = None
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", callback=split_commas,
        help="a web page origin (e.g. http://localhost:3000) that may call /v1 besides the "
             "playground; repeat for several (docs/security.md)")] = None
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", callback=split_commas,
        help="a Host name besides localhost to answer on a loopback bind (e.g. a reverse "
             "proxy's); repeat for several (docs/security.md)")] = None
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch CPU threads (default: torch's choice); 1 helps on a busy machine")
    ] = None

    def config(self) -> ServeConfig:
        """The builtin server's settings: ServeConfig with the options that were given."""
        from emosteer.server import ServeConfig

        return ServeConfig(**given(
            host=self.host, port=self.port, api_key=self.api_key, max_tokens=self.max_tokens,
            max_batch=self.max_batch, batch_window=self.batch_window,
            max_body_bytes=self.max_body_bytes, max_prompt_chars=self.max_prompt_chars,
            allow_origins=tuple(self.allow_origin) if self.allow_origin else None,
            allowed_hosts=tuple(self.allow_host) if self.allow_host else None))

    def check_key(self) -> None:
        """Refuse an empty key, given as --api-key '' or as $EMOSTEER_API_KEY='' (which the
        option parser would otherwise read as no key at all: the API served with none)."""
        env = os.environ.get(KEY_ENV)
        if self.api_key is not None and not self.api_key.strip():
            raise BadInputError("--api-key is empty: pass a key, or leave the option out to "
                                "serve without one")
        if self.api_key is None and env is not None and not env.strip():
            raise BadInputError(f"${KEY_ENV} is set but empty: set it to a key, or unset it "
                                "to serve without one")

    def builtin_only(self) -> list[str]:
        """The options given that only --engine builtin reads, as flags."""
        shared = ("host", "port", "api_key")
        return [f"--{f.name.replace('_', '-')}" for f in fields(self)
                if f.name not in shared and getattr(self, f.name) is not None]


@with_groups
def serve(
    model: ModelOpt = "default",
    vectors: Annotated[Path | None, typer.Option(
        file_okay=False, help="folder of <emotion>.safetensors; each file stem is an emotion "
                              "name (default: vectors/, else the vectors shipped for the "
                              "bundled model)")] = None,
    engine: Annotated[str, typer.Option(
        callback=engine_name,
        help="builtin (emosteer's own server) or vllm (vLLM's OpenAI server with emosteer's "
             "plugin, for big models and many GPUs; needs the vllm extra; vLLM's own "
             "options after --, docs/vllm.md)")] = "builtin",
    force: ForceOpt = False,
    meter_file: Annotated[Path | None, typer.Option(
        "--meter-file", exists=True, dir_okay=False,
        help="the meter JSON that \"meter\": true reads with, e.g. from `emosteer fit-meter` "
             "for your own emotions (default: the one shipped for the model)")] = None,
    srv: ServerOptions = ServerOptions(),
    vllm_args: Annotated[list[str] | None, typer.Argument(
        metavar="-- VLLM_OPTIONS", show_default=False,
        help="with --engine vllm, after --: vLLM's own options, passed as given "
             "(e.g. -- --tensor-parallel-size 8)")] = None,
) -> None:
    """Serve an OpenAI-compatible API with per-request emotions, and a playground at /.

    Example: [bold]emosteer serve --vectors vectors/[/bold], then open http://127.0.0.1:8000/
    and call it with the openai client: extra_body={"emotion": {"joy": 1.5}}. On vLLM:
    [bold]emosteer serve --engine vllm -- --tensor-parallel-size 2[/bold]
    """
    srv.check_key()
    if engine == "vllm":
        sys.exit(_serve_vllm(model, vectors, force, srv, list(vllm_args or []), meter_file))
    if vllm_args:
        raise BadInputError(f"{vllm_args[0]!r}: options after -- go to vLLM; add --engine "
                            "vllm, or see `emosteer serve --help` for the builtin server's")
    try:
        import uvicorn

        from emosteer.server import create_app
    except ImportError as err:
        raise EmosteerError(f"the server needs the 'server' extra ({err.name} is missing): "
                            "pip install 'emosteer[server]'") from None
    folder, found = served_vectors(vectors)
    cfg = srv.config()
    if srv.threads:
        import torch

        torch.set_num_threads(srv.threads)
    m, tok = load(model)
    for vector in found.values():
        vector.check_model(m, allow_other_model=force)
    console.print(f"serving {plain(model)} with emotions {plain(', '.join(found))} on "
                  f"http://{plain(cfg.host)}:{cfg.port}/ (playground at /, API at /v1)"
                  f"{' with an API key' if cfg.api_key else ''}")
    app = create_app(m, tok, found, cfg, vectors_from=folder)
    if meter_file is not None:  # checked against the model and the served vectors' hashes
        from emosteer.emotion_meter.meter import load_meter

        app.state.engine.meter = load_meter(m, meter_file)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def _serve_vllm(model: str, vectors: Path | None, force: bool, srv: ServerOptions,
                vllm_args: list[str], meter: Path | None = None) -> int:
    """vLLM's OpenAI server with the plugin until it exits; its exit code."""
    from emosteer.vllm import launcher

    launcher.require_vllm()
    builtin = srv.builtin_only()
    if builtin:
        raise BadInputError(f"{builtin[0]} is for --engine builtin: with vllm, give vLLM's own "
                            "options after -- (e.g. -- --max-num-seqs 64)")
    folder, found = served_vectors(vectors)
    where: dict[str, Any] = given(host=srv.host, port=srv.port)
    if srv.api_key:
        os.environ[VLLM_KEY_ENV] = srv.api_key  # vLLM reads it: the key stays out of `ps`
    console.print(f"serving {plain(model)} on vLLM with emotions {plain(', '.join(found))} "
                  f"on http://{plain(where.get('host', '127.0.0.1'))}:{where.get('port', 8000)}/ "
                  f"(playground at /, API at /v1){' with an API key' if srv.api_key else ''}")
    return launcher.serve(model, folder, extra_vllm_args=vllm_args, force=force, meter=meter,
                          **where)
