"""Batched, steered decoding: concurrent requests share one forward pass, each with its own vector.

One worker thread owns the model. Requests wait in a queue; the worker takes up to
`max_batch` of them (waiting `batch_window` seconds for company), prefills them as one
left-padded batch and decodes them step by step with a KV cache, every row steered by its own
vector through `emosteer.steering.steer_rows`. A row that finishes leaves the batch (its KV
cache rows are dropped); requests that arrive meanwhile form the next batch. Each request
samples from its own seeded generator, so its tokens do not depend on its batch-mates.

A failure fails only the request that caused it. One inside a row's own step (picking its
token, emitting its text) ends that row with an error while the others decode on; one in the
shared forward pass cannot be pinned on a row, so each unfinished request of the batch is
retried alone, from the tokens it already has (its generator continues where it was): the
request that fails alone gets the error, the others finish.

A request that asks for the emotion meter gets ("meter", (token text, {emotion: reading}))
before the text of each of its tokens. The meter's hooks are registered only for a batch that
holds such a request, and before the steering hooks, so they read each site before it is
steered; a batch without one runs exactly as before.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import cast

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from emosteer.emotion_meter.meter import Meter, as_dict, load_meter
from emosteer.emotion_meter.read import metering
from emosteer.errors import EmosteerError
from emosteer.generation import GREEDY_BELOW, GenerateConfig, eos_ids
from emosteer.models import cache_arg, cache_of, forward_params
from emosteer.steering import steer_rows
from emosteer.vectors import EmotionVector

_DEFAULTS = GenerateConfig()  # the one place for decoding defaults


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens (temperature 0, or below GREEDY_BELOW, = greedy).

    The knobs default to `emosteer.generation.GenerateConfig`'s, so the server decodes as
    the CLI and the experiments do.

    Example:
        Sampling(max_tokens=32, temperature=0)  # greedy, repetition penalty as configured
    """

    max_tokens: int = 128  # a few paragraphs (a server answer, not GenerateConfig's 48)
    temperature: float = _DEFAULTS.temperature
    top_p: float = _DEFAULTS.top_p
    repetition_penalty: float = _DEFAULTS.repetition_penalty
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings

    @property
    def greedy(self) -> bool:
        """Argmax decoding: a temperature of 0 or below GREEDY_BELOW (dividing by 1e-40
        would overflow the logits)."""
        return self.temperature < GREEDY_BELOW

    def processors(self) -> LogitsProcessorList:
        """transformers' processors for these knobs, in generate()'s order: repetition
        penalty, then temperature and top-p (the warpers only when sampling)."""
        steps = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            steps.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if not self.greedy:
            steps.append(TemperatureLogitsWarper(float(self.temperature)))
            if self.top_p < 1.0:
                steps.append(TopPLogitsWarper(self.top_p))
        return steps


@dataclass(eq=False)
class Job:
    """One request inside the engine. `emit` receives ("delta", text) events, then ("done", reason)
    or ("error", message); it is called from the worker thread. With meter=True, each token's
    ("meter", (token text, {emotion: reading})) comes before the text it adds."""

    prompt_ids: list[int]
    vector: EmotionVector | None  # alpha already applied; None = unsteered
    sampling: Sampling
    emit: Callable[[str, object], None]
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # text emitted so far (stop strings and unfinished characters held back)
    finish_reason: str | None = None
    cancelled: bool = False  # set by the API when the client goes away
    meter: bool = False  # emit each token's emotion readings (the engine's meter must be set)
    generator: torch.Generator | None = None  # its sampling stream, kept across a retry

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Owns the model in one worker thread; submit() is thread-safe.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        max_batch: rows per forward pass.
        batch_window: seconds the first request of a batch waits for batch-mates.
        max_queue: the queue length the API refuses beyond (429).

    Example:
        engine = Engine(model, tok); engine.start(); engine.submit(job)
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, batch_window: float = 0.01,
                 max_queue: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch  # rows per forward pass
        self.batch_window = batch_window  # seconds the first request waits for batch-mates
        self.max_queue = max_queue
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = forward_params(model)
        self._takes_positions = "position_ids" in params
        arg = cache_arg(model)
        if arg is None:
            raise EmosteerError(f"{type(model).__name__}.forward takes no KV cache argument: "
                                "the server decodes with a cache; serve a causal LM")
        self._cache_arg: str = arg
        # only the last position's logits: a prefill of 8 x 100 tokens would otherwise build
        # 8 x 100 x vocab floats (150 MB for SmolLM2)
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self.meter: Meter | None = None  # set by `ready_meter` on the first metered request
        self._meter_error: str | None = None  # why there is none for this model
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()  # set while the worker holds jobs taken off the queue
        self.stats = {"batches": 0, "max_batch_seen": 0, "requests": 0, "tokens": 0,
                      "errors": 0, "cancelled": 0, "retried": 0}

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="emosteer-engine",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def queued(self) -> int:
        return self._queue.qsize()

    def idle(self) -> bool:
        """True when no job waits and the worker is decoding none (the model is free)."""
        return not self._busy.is_set() and self._queue.empty()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def ready_meter(self) -> Meter:
        """The meter metered jobs read with: the one set, else the one shipped for the model
        (loaded once; an EmosteerError says how to fit one when there is none)."""
        if self.meter is None:
            if self._meter_error is not None:
                raise EmosteerError(self._meter_error)
            try:
                self.meter = load_meter(self.model)
            except EmosteerError as err:
                self._meter_error = str(err)  # asked again, answered at once
                raise
        return self.meter

    # --- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            self._busy.set()
            jobs = [first]
            deadline = time.monotonic() + self.batch_window
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
            jobs = [j for j in jobs if not j.cancelled]
            try:
                if jobs:
                    self.run(jobs)
            finally:
                self._busy.clear()

    def run(self, jobs: list[Job]) -> None:
        """Decode `jobs` as one batch; if the batch fails, each unfinished job is retried
        alone (from its tokens so far), so only the request that fails alone gets the error.
        Never raises: the worker keeps serving."""
        try:
            self.run_batch(jobs)
        except Exception as err:
            left = [j for j in jobs if j.finish_reason is None]
            if len(jobs) == 1:
                for job in left:
                    self._fail(job, err)
                return
            for job in left:
                if job.cancelled:
                    job.finish_reason = "cancelled"
                    self.stats["cancelled"] += 1
                    continue
                self.stats["retried"] += 1
                self.run([job])

    def _fail(self, job: Job, err: Exception) -> None:
        self.stats["errors"] += 1
        job.finish_reason = "error"
        job.emit("error", f"generation failed: {type(err).__name__}: {err}")

    def run_batch(self, jobs: list[Job]) -> None:
        """Prefill `jobs` as one left-padded batch, then decode until every row is done.

        A job that already has tokens (a retry) continues after them. An error in one row's
        step ends that row only; an error in the shared forward pass is raised (see `run`).
        """
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(jobs))
        device = self.model.device
        history = [[*j.prompt_ids, *j.tokens] for j in jobs]  # prompt + output (the penalty's)
        width = max(len(h) for h in history)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)  # (batch, pos)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)  # (batch, pos)
        for i, h in enumerate(history):
            ids[i, width - len(h):] = torch.tensor(h)
            mask[i, width - len(h):] = 1
        ids, mask = ids.to(device), mask.to(device)
        gens = []
        for job in jobs:
            if job.generator is None:
                job.generator = _generator(job.sampling.seed)
            gens.append(job.generator)
        steps = [j.sampling.processors() for j in jobs]
        rows = list(range(len(jobs)))  # indices into jobs of the rows still in the batch
        cache = None
        step_ids = ids
        steering = ExitStack()  # per-row vectors, re-armed only when the rows change
        with torch.no_grad(), self._metering(jobs) as readings, steering:
            steering.enter_context(self._steering([jobs[r] for r in rows]))
            while rows:
                kwargs = {"input_ids": step_ids, "attention_mask": mask, "use_cache": True,
                          **self._last_only}
                if self._takes_positions:
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, pos)
                    kwargs["position_ids"] = positions[:, -step_ids.shape[1]:]
                if cache is not None:
                    kwargs[self._cache_arg] = cache
                out = self.model(**kwargs)
                cache = cache_of(out)
                now = readings.pop() if readings else None  # (batch, emotions) when metered
                logits = out.logits[:, -1, :].float()  # (batch, vocab)
                chosen: list[int] = []
                keep = []
                for k, r in enumerate(rows):
                    try:  # this row's own step: a failure here is this request's alone
                        token = _pick(logits[k:k + 1], history[r], steps[r], gens[r],
                                      greedy=jobs[r].sampling.greedy)
                        history[r].append(token)
                        self.stats["tokens"] += 1
                        done = self._advance(jobs[r], token, None if now is None else now[k])
                    except Exception as err:
                        self._fail(jobs[r], err)
                        token, done = self.pad_id, True
                    chosen.append(token)
                    if not done:
                        keep.append(k)
                if not keep:
                    break
                if len(keep) < len(rows):
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask = mask[index]
                    steering.close()
                    steering.enter_context(self._steering([jobs[rows[k]] for k in keep]))
                rows = [rows[k] for k in keep]
                step_ids = torch.tensor([[chosen[k]] for k in keep], device=device)  # (batch, 1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)

    def _metering(self, jobs: list[Job]):
        """The meter's read-only hooks when a job asks for readings (else nothing)."""
        if self.meter is None or not any(j.meter for j in jobs):
            return nullcontext(None)
        return metering(self.model, self.meter)

    def _steering(self, jobs: list[Job]):
        vectors = [j.vector for j in jobs]
        if all(v is None for v in vectors):
            return nullcontext()
        return steer_rows(self.model, vectors, allow_other_model=True)

    def _advance(self, job: Job, token: int, reading: torch.Tensor | None = None) -> bool:
        """Record a token (and its readings), emit the new text; True when the job is finished."""
        if job.cancelled:
            job.finish_reason = "cancelled"
            self.stats["cancelled"] += 1
            return True
        ended = token in self.eos_ids
        if not ended:
            job.tokens.append(token)
            if job.meter and reading is not None and self.meter is not None:
                job.emit("meter", (self.tokenizer.decode([token]),
                                   as_dict(self.meter.emotions, reading)))
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        reason = "stop" if ended else None
        stop_at = _first_stop(text, job.sampling.stop)
        if stop_at is not None:
            text, reason = text[:stop_at], "stop"
        if reason is None and len(job.tokens) >= job.sampling.max_tokens:
            reason = "length"
        text = text.rstrip("\ufffd")  # a split character: held back, or dropped at the end
        if reason is None:  # hold back a possible start of a stop string
            text = text[:len(text) - _partial_stop(text, job.sampling.stop)]
        if len(text) > len(job.text) and text.startswith(job.text):
            job.emit("delta", text[len(job.text):])
            job.text = text
        if reason is not None:
            job.finish_reason = reason
            job.emit("done", reason)
            return True
        return False


def _pick(logits: torch.Tensor, history: list[int], steps: LogitsProcessorList,
          gen: torch.Generator, greedy: bool) -> int:
    """One token from one row's logits (1, vocab) after its processors: the argmax when
    greedy, else a draw from the row's own generator."""
    if steps:
        seen = cast(torch.LongTensor, torch.tensor([history], device=logits.device))  # (1, pos)
        logits = steps(seen, logits)
    if greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits[0], dim=-1)  # (vocab,)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of text that is the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-n:]):
                best = n
                break
    return best
