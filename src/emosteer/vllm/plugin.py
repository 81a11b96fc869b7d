"""The vLLM plugin: entry point `emosteer = "emosteer.vllm.plugin:register"` in the group
`vllm.general_plugins`, which vLLM runs in its front-end, engine-core and worker processes.

With `$EMOSTEER_VECTORS` unset, `register` does nothing. With it set (a folder of vectors):
- the engine runs on the V1 model runner with vLLM's compilation (the steering is an op in
  the compiled graph, worker.py and op.py; the op's code and the served files enter vLLM's
  compile-cache key), and the vectors are checked against the served model before it loads
  (error naming both); `EMOSTEER_VLLM_STEERING=hooks` selects the eager hook fallback;
- each request's "emotion" (SamplingParams.extra_args, vLLM's `vllm_xargs`, or the request
  body's own "emotion" field, as emosteer's server takes it) is parsed and checked: a bad one
  is an OpenAI-style 400 and the server keeps serving; a steered request gets a prefix-cache
  salt of its spec, so steered and unsteered KV blocks are never shared;
- a request's positive temperature below generation.GREEDY_BELOW is greedy, as on emosteer's
  own server (spec.request_temperature);
- each worker adds the requests' mixes on their own tokens (worker.py);
- a request with "meter": true gets per-token emotion readings, read in the workers by the
  same op (or read-only hooks in the fallback) and attached to the response by the
  front-end (meter.py, meter_http.py).

Each module is patched when vLLM imports it, so every process imports only what it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import ModuleType

from emosteer.errors import BadInputError, EmosteerError
from emosteer.protocol import METER, parse_emotion
from emosteer.vllm import op, worker
from emosteer.vllm.bank import VECTORS_ENV, VectorBank, config_shape, served_bank, served_model_id
from emosteer.vllm.meter import meter_file, served_meter
from emosteer.vllm.patching import mark, when_imported
from emosteer.vllm.spec import KEY, cache_salt, request_temperature

log = logging.getLogger("vllm.emosteer")  # a child of vLLM's logger: shown with its logs
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"  # vLLM's switch; the plugin needs the V1 runner

__all__ = ["register"]


def register() -> None:
    """vLLM's entry point: install the patches when $EMOSTEER_VECTORS names a folder.

    Example:
        EMOSTEER_VECTORS=vectors/ python -m vllm.entrypoints.openai.api_server --model ...
    """
    if not os.environ.get(VECTORS_ENV, "").strip():
        return
    os.environ.setdefault(RUNNER_ENV, "0")  # spawned engine and workers inherit it
    from emosteer.vllm import meter_http

    when_imported("vllm.engine.arg_utils", _patch_engine_args)
    when_imported("vllm.v1.engine.input_processor", _patch_input_processor)
    when_imported("vllm.entrypoints.openai.chat_completion.protocol", _patch_protocol)
    when_imported("vllm.entrypoints.openai.completion.protocol", _patch_protocol)
    when_imported("vllm.v1.worker.gpu_worker", lambda _: worker.install())
    when_imported("vllm.v1.engine.async_llm", meter_http.patch_async_llm)
    when_imported("vllm.entrypoints.openai.chat_completion.serving",
                  meter_http.patch_chat_serving)
    when_imported("vllm.entrypoints.openai.completion.serving",
                  meter_http.patch_completion_serving)


def _patch_engine_args(module: ModuleType) -> None:
    engine_args = module.EngineArgs
    original = engine_args.create_engine_config

    def create_engine_config(self, *args, **kwargs):
        if os.environ.get(RUNNER_ENV, "0").lower() in ("1", "true"):
            raise BadInputError(f"emosteer steers with vLLM's V1 model runner: unset "
                                f"{RUNNER_ENV} (the plugin sets it to 0)")
        if worker.uses_hooks():
            if not self.enforce_eager:
                log.warning("emosteer: %s=hooks needs eager mode (a compiled graph never runs "
                            "a hook); building the engine with enforce_eager=True",
                            worker.MODE_ENV)
                self.enforce_eager = True
        else:  # vLLM keys its compile caches on the config: keep the op's graphs apart
            self.additional_config = {**(self.additional_config or {}),
                                      "emosteer": compile_key(served_bank())}
        config = original(self, *args, **kwargs)
        model = config.model_config.model
        served_bank().check(config_shape(config.model_config.hf_config, served_model_id(model)))
        return config

    mark(engine_args, "create_engine_config", create_engine_config)


def compile_key(bank: VectorBank) -> str:
    """What the plugin adds to vLLM's compile-cache key (its config's additional_config): the
    op's code and the shapes it is compiled for (emotions served; the meter's layers and
    emotions). vLLM reuses a compiled model from disk by that key alone, without tracing: a
    graph compiled without the op, or for other shapes, would otherwise be served. The
    vectors' values are not in it: the graph reads them from buffers, as it reads weights."""
    meter = served_meter(bank) if meter_file(bank) is not None else None
    shapes = [len(bank.names), None if meter is None else [list(meter.layers),
                                                           len(meter.emotions)]]
    digest = hashlib.sha256(Path(op.__file__).read_bytes() + json.dumps(shapes).encode())
    return digest.hexdigest()[:16]


def _patch_input_processor(module: ModuleType) -> None:
    processor = module.InputProcessor
    original, original_init = processor.process_inputs, processor.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        # the vectors of this engine: another engine made later in the process may serve others
        self._emosteer_bank = served_bank() if os.environ.get(VECTORS_ENV, "").strip() else None

    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        params = request.sampling_params
        if params is not None and params.extra_args and KEY in params.extra_args:
            bank = getattr(self, "_emosteer_bank", None) or served_bank()
            spec = checked(params.extra_args[KEY], bank)
            # a new dict: a shallow clone shares extra_args with the caller's params
            rest = {k: v for k, v in params.extra_args.items() if k != KEY}
            # weight 0 is unsteered: no key, no salt, it shares the unsteered cache
            params.extra_args = {**rest, KEY: spec} if spec else rest or None
            request.cache_salt = cache_salt(spec, bank.fingerprint, request.cache_salt)
        return request

    mark(processor, "__init__", __init__)
    mark(processor, "process_inputs", process_inputs)


def _patch_protocol(module: ModuleType) -> None:
    """The request body's own "emotion" and "meter" fields, checked before a response (or
    stream) starts."""
    from emosteer.vllm import meter_http

    name = "ChatCompletionRequest" if hasattr(module, "ChatCompletionRequest") else \
        "CompletionRequest"
    request_cls = getattr(module, name)
    original = request_cls.to_sampling_params

    def to_sampling_params(self, *args, **kwargs):
        if getattr(self, "temperature", None) is not None:
            self.temperature = request_temperature(self.temperature)
        params = original(self, *args, **kwargs)
        body = (self.model_extra or {}).get(KEY)
        extra = params.extra_args or {}
        if body is not None and KEY in extra and extra[KEY] != body:
            raise _http_error("send the emotion once: in the body's \"emotion\" or in "
                              "vllm_xargs, not both")
        value = body if body is not None else extra.get(KEY)
        if value is not None:
            params.extra_args = {**extra, KEY: checked(value)}
        try:
            meter_http.metered(self, params, served_bank())
        except EmosteerError as err:
            raise _http_error(str(err), METER) from None
        return params

    mark(request_cls, "to_sampling_params", to_sampling_params)


def checked(value: object, bank: VectorBank | None = None) -> dict[str, float]:
    """parse_emotion against an engine's vectors (default: the folder $EMOSTEER_VECTORS
    names); a bad value raises vLLM's 400 error."""
    try:
        return parse_emotion(value, (bank or served_bank()).vectors)
    except EmosteerError as err:
        raise _http_error(str(err)) from None


def _http_error(message: str, parameter: str = KEY) -> Exception:
    from vllm.exceptions import VLLMValidationError  # the API server answers it with a 400

    return VLLMValidationError(message, parameter=parameter)
