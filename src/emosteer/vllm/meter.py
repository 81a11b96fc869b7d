"""The emotion meter inside vLLM: which meter a server reads with, the request's "meter" field,
and the worker's read-only hooks. No vLLM import (the front-end half is meter_http.py).

A request with `"meter": true` gets one reading per generated token, as from emosteer's own
server: the meter (emosteer.emotion_meter.meter.Meter) projects the attention outputs of its layer
band on its unit directions and calibrates them to 0-1, on the state the token was sampled
from (the prefill's last position for the first token, then each decode step's new token).

Which meter: the file `$EMOSTEER_METER` names (a meter JSON written by `Meter.save`, e.g.
`scripts/fit_meter.py --out meter.json`), else the meter shipped for the model the served
vectors were made for (the bundled model has one). With neither, "meter": true is a 400.

Front-end and workers meet by an id: a metered request's SamplingParams carry
`extra_args["emosteer_meter"]` (a fresh id per engine request). Each worker step, the runner's
batch says which rows are metered requests; the hooks read the last row of each such request
(the one its next token is sampled from), and the readings wait in the worker, by id and
generated-token index, until the front-end fetches them over vLLM's collective_rpc.
A step with no metered request registers no hook.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emosteer.emotion_meter.meter import Meter, shipped_meter_files
from emosteer.emotion_meter.read import projection_hooks
from emosteer.errors import BadInputError, EmosteerError
from emosteer.hooks import hooked
from emosteer.vllm.bank import FORCE_ENV, VectorBank

log = logging.getLogger("vllm.emosteer")

METER_ENV = "EMOSTEER_METER"  # a meter JSON file to read with (default: the shipped one)
ID_KEY = "emosteer_meter"  # SamplingParams.extra_args key: the id readings are kept under
RPC = "emosteer_meter_readings"  # the worker method the front-end calls (collective_rpc)
KEEP = 4096  # at most this many requests' readings wait in a worker (oldest dropped first)

__all__ = ["ID_KEY", "METER_ENV", "RPC", "MeterPlan", "MeterReader", "meter_file",
           "served_meter"]


def meter_file(bank: VectorBank) -> Path | None:
    """The meter file this server reads with: $EMOSTEER_METER, else the one shipped for the
    model the served vectors were made for; None when there is neither."""
    named = os.environ.get(METER_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    shipped = shipped_meter_files({v.meta.get("model_id") for v in bank.vectors.values()})
    return shipped[0] if shipped else None


@cache
def served_meter(bank: VectorBank) -> Meter:
    """This process's meter (loaded once); raises EmosteerError saying how to get one."""
    path = meter_file(bank)
    if path is None:
        raise EmosteerError(f"no emotion meter is fitted for the served model: fit one with "
                            f"`python scripts/fit_meter.py --vectors <folder> --out meter.json` "
                            f"and start the server with {METER_ENV}=meter.json")
    meter = Meter.load(path)
    if meter.site != "attn":
        raise BadInputError(f"meter {path} reads site {meter.site!r}; the vLLM plugin reads the "
                            "attention output projection only: fit it on site='attn' vectors")
    return meter


@contextmanager
def _after(fn: Callable[[], None]) -> Iterator[None]:
    """A block that runs fn once it ends without an error."""
    yield
    fn()


def check_meter(meter: Meter, shape: dict[str, str]) -> None:
    """Raise VectorMismatchError if the meter was fitted for another model than `shape`'s."""
    meter.check_shape(shape, f"for the served model and name it in ${METER_ENV}",
                      os.environ.get(FORCE_ENV, "") == "1")


@dataclass(frozen=True)
class MeterPlan:
    """One forward step's metering: the rows read and what each reading is kept under."""

    rows: torch.Tensor  # (n,) long: the last row of each metered request in the flat batch
    keys: list[tuple[str, int]]  # per row: (meter id, index of the token sampled from it)


class MeterReader:
    """A worker's meter: its band's attention outputs, read-only, and the readings waiting.

    Example:
        reader = MeterReader(meter, {layer: module, ...}, device)
        with reader.reading(reader.plan(runner)):
            runner.model(...)
        reader.take("id", 0, 3, done=False)  # [[0.8, 0.1, ...], ...] for tokens 0, 1, 2
    """

    def __init__(self, meter: Meter, modules: dict[int, torch.nn.Module],
                 device: torch.device) -> None:
        self.meter = meter
        self.modules = modules  # the band's layers -> attention output projection
        self.units = {layer: u.to(device) for layer, u in meter.band().items()
                      if layer in modules}
        self.store: dict[str, dict[int, list[float]]] = {}
        # the steering op's buffers, by layer, once it is in (worker.py): the op writes every
        # row's projections there and no hook is needed
        self.readings: dict[int, torch.Tensor] | None = None

    def plan(self, runner: Any) -> MeterPlan | None:
        """This step's metered rows, from the V1 runner's batch; None when none is metered."""
        batch = runner.input_batch
        starts = runner.query_start_loc.np  # request i owns rows [starts[i], starts[i + 1])
        rows, keys = [], []
        for i, req_id in enumerate(batch.req_ids[:batch.num_reqs]):
            state = runner.requests.get(req_id)
            meter_id = (getattr(getattr(state, "sampling_params", None), "extra_args", None)
                        or {}).get(ID_KEY)
            if not meter_id:
                continue
            n = int(starts[i + 1] - starts[i])
            # after this step the request has computed `done` tokens; the last row's state
            # samples token `done` of the sequence, generated token `done - prompt`
            token = int(batch.num_computed_tokens_cpu[i]) + n - int(batch.num_prompt_tokens[i])
            if n and token >= 0:  # a prefill chunk short of the prompt's end samples nothing
                rows.append(int(starts[i + 1]) - 1)
                keys.append((str(meter_id), token))
        if not rows:
            return None
        device = next(iter(self.units.values())).device
        return MeterPlan(torch.from_numpy(np.array(rows)).long().to(device), keys)

    def reading(self, plan: MeterPlan | None):
        """A block in which every forward reads the plan's rows (no hook when plan is None).

        Enter it before the steering block: hooks run in the order they were registered, so
        the meter reads each layer's own output before the steering adds to it (as
        emosteer's own server does)."""
        if plan is None:
            return hooked(None, {})

        def keep(projections: dict[int, torch.Tensor]) -> None:
            self._keep(plan, self.meter.calibrate(self.meter.raw(projections)))

        buffers = self.readings
        if buffers is not None:
            return _after(lambda: keep({layer: buffer.index_select(0, plan.rows)
                                        for layer, buffer in buffers.items()}))
        return hooked(None, projection_hooks(self.modules, self.units,
                                             lambda hidden: hidden.index_select(0, plan.rows),
                                             {}, keep))

    def _keep(self, plan: MeterPlan, values: torch.Tensor) -> None:
        for (meter_id, token), row in zip(plan.keys, values.tolist(), strict=True):
            self.store.setdefault(meter_id, {})[token] = row
        while len(self.store) > KEEP:  # a front-end that never came back for them
            self.store.pop(next(iter(self.store)))

    def take(self, meter_id: str, first: int, last: int, done: bool) -> list[list[float] | None]:
        """The readings of generated tokens first..last-1 (None where there is none), dropping
        those before `last`; done: drop the request's readings altogether."""
        kept = self.store.get(meter_id, {})
        out = [kept.get(k) for k in range(first, last)]
        if done:
            self.store.pop(meter_id, None)
        else:
            for k in [k for k in kept if k < last]:
                del kept[k]
        return out
