"""Worker side: steer each request of a vLLM V1 batch on its own tokens, prompt and generated.

Supported: vLLM's V1 model runner (`vllm.v1.worker.gpu_model_runner.GPUModelRunner`, which
the CPU runner extends); the plugin selects it (see plugin.py). The V2 runner lays its batch
out differently and is not supported.

Before each forward, the V1 runner holds the batch's request ids in order
(`input_batch.req_ids`), each request's sampling params (`requests[id].sampling_params`,
whose `extra_args["emotion"]` is the spec the front-end checked) and the token layout:
request i owns tokens `query_start_loc[i]:query_start_loc[i + 1]` of the flattened batch
(its prompt chunk during prefill, its new token while decoding; padding comes after the
last request).

Two ways to add `weights @ vectors[layer]` to a request's rows at each layer's attention
output projection, in float32 (clamped in float16, as emosteer.steering does):
- the steering op (default; op.py): at load time each projection is wrapped in a module
  calling `emosteer::steer`, which compiles with the model (torch.compile, CUDA graphs); each
  step the runner writes every token's weights into one persistent buffer in place;
- forward hooks (`EMOSTEER_VLLM_STEERING=hooks`, a fallback; the plugin builds the engine
  eager then, since a compiled graph never runs a hook): one plan per step (the steered rows
  and each row's spec), a hook per layer, none when nothing is steered.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emosteer.errors import BadInputError, UnknownArchitectureError
from emosteer.hooks import hooked, untuple
from emosteer.models import architecture_for
from emosteer.steering import added_in_float32
from emosteer.vllm.bank import VectorBank, config_shape, served_model_id
from emosteer.vllm.meter import RPC, MeterReader, check_meter, meter_file, served_meter
from emosteer.vllm.op import Coefficients, SteeredOutput
from emosteer.vllm.spec import KEY

log = logging.getLogger("vllm.emosteer")  # a child of vLLM's logger: shown with its logs

MODE_ENV = "EMOSTEER_VLLM_STEERING"  # "op" (default): the compiled op; "hooks": the fallback

__all__ = ["MODE_ENV", "Plan", "Steerer", "install", "runner_meter", "runner_steerer",
           "uses_hooks"]


def uses_hooks() -> bool:
    """True when $EMOSTEER_VLLM_STEERING selects the eager hook fallback; raises on a value
    that is neither "op" nor "hooks"."""
    mode = os.environ.get(MODE_ENV, "op").strip().lower() or "op"
    if mode not in ("op", "hooks"):
        raise BadInputError(f"${MODE_ENV}={mode!r}: use \"op\" (the compiled steering op, "
                            "the default) or \"hooks\" (eager forward hooks, the fallback)")
    return mode == "hooks"


@dataclass(frozen=True)
class Plan:
    """One forward step's steering: which token rows, and with which mix of emotions."""

    rows: torch.Tensor  # (n,) long: steered token rows of the flattened batch
    row_spec: torch.Tensor  # (n,) long: each row's index into `weights`
    weights: torch.Tensor  # (specs, emotions) float32: one row per distinct spec


class Steerer:
    """The per-worker state: the vectors on the model's device and the modules to hook.

    Example:
        steerer = Steerer.for_runner(runner, VectorBank.from_env())
        steerer.compile(runner.get_model(), runner.max_num_tokens)  # the op: wrap once
        steerer.fill(runner)  # before each step
        # or, the hook fallback:
        with steerer.steering(steerer.plan(runner)):
            runner.model(...)
    """

    def __init__(self, bank: VectorBank, modules: dict[int, torch.nn.Module],
                 stack: torch.Tensor) -> None:
        self.bank = bank
        self.modules = modules  # layer -> attention output projection (this rank's layers)
        self.stack = stack  # (layers, emotions, hidden) float32 on the model's device
        self.index = {name: k for k, name in enumerate(bank.names)}
        self._unknown: set[str] = set()
        self.coefficients: Coefficients | None = None  # set by compile(): the op is in
        self._rows: dict[str, np.ndarray | None] = {}  # request id -> its weights (op)

    @classmethod
    def for_runner(cls, runner: Any, bank: VectorBank) -> Steerer:
        """Check the bank against the runner's model and find its output projections."""
        model_config = runner.model_config
        shape = config_shape(model_config.hf_config, served_model_id(model_config.model))
        bank.check(shape)
        modules = attention_outputs(runner.get_model(), shape["architecture"],
                                    int(shape["num_layers"]))
        device = next(runner.get_model().parameters()).device
        stack = bank.stacked(int(shape["num_layers"])).to(device)
        log.info("emosteer: steering %d layers with emotions %s from %s", len(modules),
                 ", ".join(bank.names), bank.folder)
        return cls(bank, modules, stack)

    def plan(self, runner: Any) -> Plan | None:
        """This step's plan from the V1 runner's batch layout; None when nothing is steered."""
        batch = runner.input_batch
        specs: dict[tuple, int] = {}  # spec items -> row of `weights`
        starts = runner.query_start_loc.np  # (num_reqs + 1,) token offsets, set this step
        chunks, owners = [], []
        for i, req_id in enumerate(batch.req_ids[:batch.num_reqs]):
            spec = request_spec(runner, req_id)
            if spec is None:
                continue
            key = tuple(sorted(spec.items()))
            owner = specs.setdefault(key, len(specs))
            chunks.append(np.arange(starts[i], starts[i + 1]))
            owners.append(np.full(starts[i + 1] - starts[i], owner))
        if not chunks:
            return None
        device = self.stack.device
        weights = torch.tensor([self._weights(dict(key)) for key in specs],
                               dtype=torch.float32)
        return Plan(rows=torch.from_numpy(np.concatenate(chunks)).long().to(device),
                    row_spec=torch.from_numpy(np.concatenate(owners)).long().to(device),
                    weights=weights.to(device))

    def compile(self, model: torch.nn.Module, max_tokens: int,
                units: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Wrap each attention output projection of `model` in a SteeredOutput (op.py), once,
        before vLLM compiles it; returns the meter's readings buffers, by layer.

        Args:
            model: the vLLM model holding self.modules.
            max_tokens: the most token rows a forward takes (the runner's max_num_tokens).
            units: the meter's (emotions, hidden) directions by layer, read by the op.
        """
        device = self.stack.device
        self.coefficients = Coefficients(max_tokens, len(self.bank.names), device)
        units = units or {}
        readings = {layer: torch.zeros(max_tokens, len(u), device=device)
                    for layer, u in units.items()}
        none = torch.zeros(0, self.stack.shape[-1], device=device)
        paths = {id(module): path for path, module in model.named_modules()}
        for layer, module in list(self.modules.items()):
            wrapped = SteeredOutput(module, self.coefficients.rows, self.stack[layer],
                                    units.get(layer, none),
                                    readings.get(layer, torch.zeros(0, 0, device=device)))
            parent, _, name = paths[id(module)].rpartition(".")
            setattr(model.get_submodule(parent), name, wrapped)
        log.info("emosteer: the steering op is in (%d layers); vLLM compiles it with the model",
                 len(self.modules))
        return readings

    def fill(self, runner: Any) -> None:
        """Write this step's per-token weights into the op's buffer (compile() first)."""
        batch = runner.input_batch
        ids = batch.req_ids[:batch.num_reqs]
        known = self._rows
        self._rows = {req_id: known[req_id] if req_id in known else self._row(runner, req_id)
                      for req_id in ids}  # finished requests drop out
        assert self.coefficients is not None, "Steerer.fill before Steerer.compile"
        self.coefficients.fill([self._rows[req_id] for req_id in ids],
                               runner.query_start_loc.np)

    def state(self, model: torch.nn.Module) -> dict:
        """What this worker steers with, for collective_rpc("emosteer_state"): the mode, how
        many of `model`'s modules are the op's wrappers, and the op's buffer (its address,
        which never changes, and the sum of its absolute values)."""
        rows = None if self.coefficients is None else self.coefficients.rows
        return {"mode": "hooks" if rows is None else "op",
                "wrapped": sum(isinstance(m, SteeredOutput) for m in model.modules()),
                "coefficients": None if rows is None else [rows.data_ptr(),
                                                           float(rows.abs().sum())]}

    def _row(self, runner: Any, req_id: str) -> np.ndarray | None:
        spec = request_spec(runner, req_id)
        return None if spec is None else np.asarray(self._weights(spec), dtype=np.float32)

    def _weights(self, spec: dict[str, float]) -> list[float]:
        unknown = set(spec) - set(self.index) - self._unknown
        if unknown:  # the front-end checked names against the same folder: a changed folder
            self._unknown |= unknown
            log.warning("emosteer: emotions %s are not in %s; they are ignored",
                        sorted(unknown), self.bank.folder)
        return self.bank.weights(spec)

    def steering(self, plan: Plan | None):
        """A block in which every forward adds the plan's steering (no hook when plan is None)."""
        hooks = {} if plan is None else {
            module: _adder(self.stack[layer], plan) for layer, module in self.modules.items()}
        return hooked(None, hooks)


def request_spec(runner: Any, req_id: str) -> dict[str, float] | None:
    """A running request's emotion spec (SamplingParams.extra_args["emotion"]); None when it
    is not steered."""
    params = getattr(runner.requests.get(req_id), "sampling_params", None)
    spec = (getattr(params, "extra_args", None) or {}).get(KEY)
    return spec if spec and isinstance(spec, dict) else None


def _adder(vectors: torch.Tensor, plan: Plan):
    """A forward hook adding plan.weights @ vectors to the plan's rows of the output."""

    def hook(module, args, output):
        hidden = untuple(output)  # (tokens, hidden)
        delta = (plan.weights @ vectors).index_select(0, plan.row_spec)  # (n, hidden)
        rows = added_in_float32(hidden.index_select(0, plan.rows), delta)
        hidden.index_copy_(0, plan.rows, rows)  # steered rows only
        return output

    return hook


def attention_outputs(model: torch.nn.Module, model_type: str, num_layers: int
                      ) -> dict[int, torch.nn.Module]:
    """layer -> attention output projection of a vLLM model, for the layers on this rank.

    vLLM names its modules as transformers does, so emosteer's architecture table applies;
    layers held by other pipeline ranks (vLLM's PPMissingLayer) are skipped.
    """
    arch = architecture_for(model_type)
    found = {}
    for layer in range(num_layers):
        try:
            found[layer] = model.get_submodule(f"{arch.layers}.{layer}.{arch.attn_out}")
        except AttributeError:
            continue
    if not found:
        raise UnknownArchitectureError(
            f"no attention output projection at {arch.layers}.<i>.{arch.attn_out} in the "
            f"vLLM model {type(model).__name__}: fix its entry in emosteer.ARCHITECTURES")
    return found


def install() -> None:
    """Patch vLLM's V1 model runner to steer, and its worker to set steering up at load time.

    Idempotent (vLLM loads plugins in every process, some more than once).
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    if getattr(GPUModelRunner._model_forward, "_emosteer", False):
        return
    forward, load = GPUModelRunner._model_forward, Worker.load_model

    def _model_forward(self, *args, **kwargs):
        steerer = runner_steerer(self)
        if steerer is None:
            return forward(self, *args, **kwargs)
        reader = runner_meter(self)
        metering = reader.reading(reader.plan(self)) if reader is not None else nullcontext()
        if steerer.coefficients is not None:  # the op: this step's weights, in place
            steerer.fill(self)
            with metering:
                return forward(self, *args, **kwargs)
        # the hooks: the meter's first, so it reads each layer before the steering adds to it
        with metering, steerer.steering(steerer.plan(self)):
            return forward(self, *args, **kwargs)

    def meter_readings(self, meter_id: str, first: int, last: int, done: bool):
        """collective_rpc(RPC): a metered request's readings (None: this worker has no meter)."""
        reader = runner_meter(self.model_runner)
        return None if reader is None else reader.take(meter_id, first, last, done)

    def emosteer_state(self) -> dict | None:
        """collective_rpc("emosteer_state"): how this worker steers (None: plugin off)."""
        steerer = runner_steerer(self.model_runner)
        return None if steerer is None else steerer.state(self.model_runner.get_model())

    def load_model(self, *args, **kwargs):
        load(self, *args, **kwargs)
        if not isinstance(self.model_runner, GPUModelRunner):  # the V2 runner
            if VectorBank.from_env() is not None:
                raise BadInputError(
                    f"emosteer steers with vLLM's V1 model runner only, and this worker runs "
                    f"{type(self.model_runner).__module__}: set VLLM_USE_V2_MODEL_RUNNER=0")
            return
        steerer = runner_steerer(self.model_runner)  # checks the vectors now
        reader = runner_meter(self.model_runner)  # and the meter
        if steerer is None:
            return
        if uses_hooks():
            log.warning("emosteer: %s=hooks: steering with forward hooks, in eager mode (the "
                        "fallback; unset it for the compiled steering op)", MODE_ENV)
            return
        readings = steerer.compile(self.model_runner.get_model(),
                                   int(self.model_runner.max_num_tokens),
                                   None if reader is None else reader.units)
        if reader is not None:
            reader.readings = readings

    _model_forward._emosteer = True  # type: ignore[attr-defined]
    GPUModelRunner._model_forward = _model_forward
    Worker.load_model = load_model
    setattr(Worker, RPC, meter_readings)
    Worker.emosteer_state = emosteer_state


_OFF = object()  # runner attribute value: no vectors configured, never steer


def runner_steerer(runner: Any) -> Steerer | None:
    """The runner's Steerer, built on first use; None when $EMOSTEER_VECTORS is unset."""
    steerer = runner.__dict__.get("_emosteer_steerer")
    if steerer is None:
        bank = VectorBank.from_env()
        steerer = _OFF if bank is None else Steerer.for_runner(runner, bank)
        runner.__dict__["_emosteer_steerer"] = steerer
    return None if steerer is _OFF else steerer


def runner_meter(runner: Any) -> MeterReader | None:
    """The runner's MeterReader, built on first use; None when the plugin is off, no meter is
    fitted for the served model, or this pipeline rank does not hold the meter's whole band."""
    reader = runner.__dict__.get("_emosteer_meter")
    if reader is None:
        reader = _OFF
        steerer = runner_steerer(runner)
        path = None if steerer is None else meter_file(steerer.bank)
        if steerer is not None and path is not None:
            meter = served_meter(steerer.bank)
            model_config = runner.model_config
            shape = config_shape(model_config.hf_config, served_model_id(model_config.model))
            check_meter(meter, shape)
            modules = attention_outputs(runner.get_model(), shape["architecture"],
                                        int(shape["num_layers"]))
            if set(meter.layers) <= set(modules):
                reader = MeterReader(meter, {layer: modules[layer] for layer in meter.layers},
                                     steerer.stack.device)
                log.info("emosteer: the emotion meter %s reads %s over layers %d-%d", path,
                         ", ".join(meter.emotions), meter.layers[0], meter.layers[-1])
            else:
                log.warning("emosteer: this pipeline rank does not hold all the meter's layers: "
                            "it does not meter (the meter needs one pipeline stage)")
        runner.__dict__["_emosteer_meter"] = reader
    return None if reader is _OFF else reader
