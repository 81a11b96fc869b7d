"""The emotion meter: per token, a 0-1 reading per emotion, read back from the model itself.

At each layer l of a band, the output of the vectors' site (the attention output by default)
is projected on the unit emotion directions u_le = EV_le / |EV_le|; the mean over the band is
the raw reading f_e, and a logistic fitted on labelled text (`meter_fit.fit_meter`, on the
training part of emotion_corpus) maps it to 0-1: reading_e = sigmoid(w_e . z + b_e), z the
standardised raw readings.

A token's reading is the state the model wrote it from: the position just before it (for a
text's first token, the BOS token before it). So the readings taken while generating (the
`metering` hook: the newest position of each forward pass, no extra pass) equal the readings
of the finished text read again (`meter`), when nothing steers.

The meter's hooks only read: they return nothing, so the model's outputs are unchanged.
Open `metering` outside (before) `steer`: hooks run in the order they were registered, so the
meter then reads each layer's own output before the steering adds to it (the vector's own
addition would otherwise show as a constant offset on its emotion).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch

from emosteer.errors import BadInputError, VectorFileError, VectorMismatchError
from emosteer.files import write_text
from emosteer.generation import (
    GenerateConfig,
    chat_prompt,
    forward_kwargs,
    generate,
    render_chat,
)
from emosteer.hooks import hooked, untuple
from emosteer.models import forward_params, model_shape, site_modules
from emosteer.vectors import made_for, shape_differences

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Site
    from emosteer.vectors import EmotionVector

__all__ = ["Meter", "Readings", "generate_metered", "load_meter", "meter", "metering",
           "read_texts"]

FORMAT_VERSION = "1"
SHIPPED = Path(__file__).parent / "data"  # meter-<model>.json files, one per bundled model
Piece: TypeAlias = tuple[list[int], list[int]]  # (prefix ids read first, ids of the text read)
# what `meter` reads with: a Meter, a meter file, vectors, or None (the shipped meter)
Directions: TypeAlias = "Meter | Mapping[str, EmotionVector] | str | Path | None"


@dataclass(frozen=True)
class Readings:
    """The meter's readings of one text: one row of 0-1 values per token.

    Example:
        r = emosteer.meter(model, tok, "What a lovely surprise!")
        r.mean()["joy"], r.dominant()[-1]
    """

    emotions: tuple[str, ...]
    tokens: list[str]  # each token's text
    values: torch.Tensor  # (tokens, emotions), in [0, 1]
    text: str = ""

    def mean(self) -> dict[str, float]:
        """The text-level reading: the mean over tokens per emotion (0 for an empty text)."""
        if not self.tokens:
            return {e: 0.0 for e in self.emotions}
        return {e: float(v) for e, v in zip(self.emotions, self.values.mean(0), strict=True)}

    def dominant(self, floor: float = 0.5) -> list[str | None]:
        """Per token, the emotion reading highest, or None when none reaches `floor`."""
        best, index = self.values.max(-1) if self.tokens else (torch.zeros(0), torch.zeros(0))
        return [self.emotions[int(i)] if float(b) >= floor else None
                for b, i in zip(best, index, strict=True)]

    def per_token(self, digits: int = 4) -> list[dict[str, Any]]:
        """[{"token": text, "readings": {emotion: value}}] per token (the API's form)."""
        return [{"token": t, "readings": as_dict(self.emotions, v, digits)}
                for t, v in zip(self.tokens, self.values, strict=True)]


def as_dict(emotions: Sequence[str], values: torch.Tensor, digits: int = 4) -> dict[str, float]:
    """{emotion: value rounded} for one row of readings."""
    return {e: round(float(v), digits) for e, v in zip(emotions, values, strict=True)}


@dataclass(frozen=True, eq=False)
class Meter:
    """Unit emotion directions over a layer band and the calibration that maps them to 0-1.

    Example:
        m = load_meter(model)  # the one shipped for the bundled model
        with metering(model, m) as steps: model.generate(...)
    """

    emotions: tuple[str, ...]
    site: Site
    layers: tuple[int, ...]  # the band, sorted
    directions: torch.Tensor  # (layers, emotions, d_model), unit rows
    mean: torch.Tensor  # (emotions,) raw readings' mean on the fitting tokens
    std: torch.Tensor  # (emotions,)
    weight: torch.Tensor  # (emotions, emotions): row e reads the standardised raw readings
    bias: torch.Tensor  # (emotions,)
    card: dict = field(default_factory=dict)  # provenance: model, vectors, corpus, selection

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, EmotionVector], layers: Sequence[int],
                     emotions: Sequence[str] | None = None) -> Meter:
        """An uncalibrated meter over `layers` of the vectors (reading_e = sigmoid of the raw
        reading); `meter_fit.fit_meter` calibrates it.

        Example:
            Meter.from_vectors(vectors, layers=[10, 11, 12], emotions=["joy", "anger"])
        """
        names = tuple(emotions or vectors)
        missing = [e for e in names if e not in vectors]
        if missing:
            raise BadInputError(f"no vector for {missing}: the vectors are {sorted(vectors)}")
        sites = {vectors[e].site for e in names}
        if len(sites) != 1:
            raise BadInputError(f"the vectors mix sites {sorted(sites)}: meter one site")
        band = tuple(sorted(set(layers)))
        if not band:
            raise BadInputError("a meter needs at least one layer")
        rows = []
        for layer in band:
            stack = []
            for e in names:
                if layer not in vectors[e].directions:
                    raise BadInputError(f"vector {e!r} has no layer {layer}")
                v = vectors[e].directions[layer]
                stack.append(v / v.norm().clamp(min=1e-12))
            rows.append(torch.stack(stack))
        n = len(names)
        first = vectors[names[0]].meta
        card = {k: first[k] for k in ("model_id", "architecture", "hidden_size", "num_layers")
                if k in first}
        card["vectors"] = {e: provenance(vectors[e], band) for e in names}
        return cls(names, sites.pop(), band, torch.stack(rows), torch.zeros(n), torch.ones(n),
                   torch.eye(n), torch.zeros(n), card)

    def band(self) -> dict[int, torch.Tensor]:
        """{layer: (emotions, d_model) unit directions}."""
        return {layer: self.directions[i] for i, layer in enumerate(self.layers)}

    def raw(self, projections: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Band mean of per-layer projections {layer: (..., emotions)}: (..., emotions)."""
        return torch.stack([projections[layer] for layer in self.layers]).mean(0)

    def calibrate(self, raw: torch.Tensor) -> torch.Tensor:
        """0-1 readings from raw band readings (..., emotions)."""
        z = (raw.float().cpu() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight.T + self.bias)

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model."""
        shape = model_shape(model)
        diffs = shape_differences({k: str(v) for k, v in self.card.items()}, shape)
        if int(shape["hidden_size"]) != self.directions.shape[-1]:
            diffs.append(f"direction length {self.directions.shape[-1]} vs hidden_size "
                         f"{shape['hidden_size']}")
        if diffs:
            raise VectorMismatchError(
                f"the emotion meter {made_for(self.card, shape)} ({'; '.join(diffs)}): fit one "
                "for this model with `python scripts/fit_meter.py --model ... --vectors ...`")

    def matches(self, vectors: Mapping[str, EmotionVector]) -> bool:
        """True when `vectors` hold exactly the directions this meter was fitted with."""
        fitted = self.card.get("vectors", {})
        return all(e in vectors and e in fitted and fitted[e].get("band_sha256") ==
                   provenance(vectors[e], self.layers)["band_sha256"] for e in self.emotions)

    # --- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        directions = self.directions.float().contiguous().numpy().tobytes()
        return {"format_version": FORMAT_VERSION, "kind": "emosteer emotion meter",
                "emotions": list(self.emotions), "site": self.site, "layers": list(self.layers),
                "calibration": {"mean": self.mean.tolist(), "std": self.std.tolist(),
                                "weight": self.weight.tolist(), "bias": self.bias.tolist()},
                "directions": {"dtype": "float32 little-endian, base64",
                               "shape": list(self.directions.shape),
                               "data": base64.b64encode(directions).decode("ascii")},
                "card": self.card}

    def save(self, path: str | Path) -> Path:
        """Write the meter as one JSON file, atomically (never pickle)."""
        return write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Meter:
        """Read a file written by `save`; a clear error for anything else."""
        path = Path(path)
        hint = "fit one with `python scripts/fit_meter.py`"
        if not path.is_file():
            raise VectorFileError(f"meter file {path} does not exist: {hint}")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_json(body)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise VectorFileError(f"{path} is not an emosteer meter file ({err}): {hint}") from None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Meter:
        if body.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {body.get('format_version')!r}, expected "
                             f"{FORMAT_VERSION!r}")
        emotions, layers = tuple(body["emotions"]), tuple(int(i) for i in body["layers"])
        d = body["directions"]
        raw = bytearray(base64.b64decode(d["data"], validate=True))
        directions = torch.frombuffer(raw, dtype=torch.float32).reshape(d["shape"]).clone()
        cal = {k: torch.tensor(v, dtype=torch.float32) for k, v in body["calibration"].items()}
        n = len(emotions)
        if directions.shape[:2] != (len(layers), n) or cal["weight"].shape != (n, n) or any(
                cal[k].shape != (n,) for k in ("mean", "std", "bias")):
            raise ValueError("shapes do not agree with the emotions and layers")
        if not all(torch.isfinite(t).all() for t in (directions, *cal.values())):
            raise ValueError("NaN or infinite values")
        return cls(emotions, cast("Site", body["site"]), layers, directions, cal["mean"],
                   cal["std"], cal["weight"], cal["bias"], dict(body.get("card", {})))


def provenance(vector: EmotionVector, layers: Sequence[int]) -> dict[str, str]:
    """What a meter records of a vector: its metadata and a hash of its band directions."""
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(vector.directions[layer].float().contiguous().numpy().tobytes())
    keep = ("emotion", "method", "dataset", "dataset_sha256", "dataset_version", "created",
            "emosteer_version", "site", "scale", "limit")
    return {**{k: vector.meta[k] for k in keep if k in vector.meta},
            "band_sha256": digest.hexdigest()[:16]}


def load_meter(model: PreTrainedModel, source: Directions = None) -> Meter:
    """The meter for `model`: given, from a file, or shipped (source None or "default").

    Args:
        model: the model it will read (checked against the meter's card).
        source: a Meter; a meter JSON file; vectors (then the shipped meter fitted with exactly
            those directions); None / "default": the one shipped for this model.

    Example:
        m = load_meter(model)  # data/meter-smollm2-135m-instruct.json for the bundled model
    """
    if isinstance(source, Meter):
        found = source
    elif isinstance(source, (str, Path)) and str(source) != "default":
        found = Meter.load(source)
    else:
        found = _shipped(model, None if isinstance(source, (str, Path)) else source)
    found.check_model(model)
    return found


def _shipped(model: PreTrainedModel, vectors: Mapping[str, EmotionVector] | None) -> Meter:
    wanted = model_shape(model)["model_id"]
    meters = [Meter.load(p) for p in sorted(SHIPPED.glob("meter-*.json"))]
    mine = [m for m in meters if m.card.get("model_id") == wanted]
    if vectors is not None:
        mine = [m for m in mine if m.matches(vectors)]
    if not mine:
        which = "these vectors" if vectors is not None else f"model {wanted!r}"
        raise VectorFileError(f"no emotion meter is fitted for {which}: fit one (about a "
                              "minute) with `python scripts/fit_meter.py --vectors <folder> "
                              "--out meter.json` and pass that file")
    return mine[0]


# --- reading ---------------------------------------------------------------------------------
@contextmanager
def projecting(model: PreTrainedModel, site: Site, directions: Mapping[int, torch.Tensor],
               last_only: bool = False,
               on_pass: Callable[[dict[int, torch.Tensor]], None] | None = None
               ) -> Iterator[dict[int, torch.Tensor]]:
    """Each forward pass's site outputs projected on `directions` {layer: (emotions, d)}.

    Yields {layer: (batch, pos, emotions)} float32, overwritten by every pass (last_only: only
    the newest position, (batch, 1, emotions)); on_pass(projections) runs after the highest
    layer's hook, once per pass. The hooks return nothing: outputs are untouched.
    """
    out: dict[int, torch.Tensor] = {}
    top = max(directions)

    def make(layer: int, unit: torch.Tensor):
        def hook(module, args, output):
            hidden = untuple(output)  # (batch, pos, d_model)
            if last_only:
                hidden = hidden[:, -1:]
            out[layer] = hidden.float() @ unit.to(hidden.device).T  # (batch, pos, emotions)
            if on_pass is not None and layer == top:
                on_pass(out)
        return hook

    modules = site_modules(model, site)
    with hooked(model, {modules[layer]: make(layer, u) for layer, u in directions.items()}):
        yield out


@contextmanager
def metering(model: PreTrainedModel, meter: Meter) -> Iterator[list[torch.Tensor]]:
    """Record the readings of the newest position of every forward pass inside the block.

    Yields a list that gains one (batch, emotions) tensor per forward pass: during generation,
    entry k holds the readings of the k-th generated token of each row (the prefill's last
    position wrote the first one). Read-only, no extra forward pass. Enter it before `steer`.

    Example:
        with metering(model, m) as steps, emosteer.steer(model, joy, 1.0):
            model.generate(**enc, max_new_tokens=20)
        readings = torch.stack(steps, dim=1)  # (batch, new tokens, emotions)
    """
    meter.check_model(model)
    steps: list[torch.Tensor] = []

    def record(projections: dict[int, torch.Tensor]) -> None:
        steps.append(meter.calibrate(meter.raw(projections))[:, -1])

    with projecting(model, meter.site, meter.band(), last_only=True, on_pass=record):
        yield steps


@torch.no_grad()
def token_projections(model: PreTrainedModel, site: Site,
                      directions: Mapping[int, torch.Tensor], sequences: Sequence[Piece],
                      batch_size: int = 16, progress: bool = False) -> list[torch.Tensor]:
    """Per sequence, each metered token's projections at every layer: (tokens, layers, emotions).

    Layers in sorted order. Token j of a sequence (prefix, ids) is read at the position
    before it (the last prefix token for j = 0; its own position when there is no prefix).
    Sequences are batched by length, left padded.
    """
    from emosteer.progress import progress_bar

    layers = sorted(directions)
    n_emotions = next(iter(directions.values())).shape[0]
    out = [torch.zeros(0, len(layers), n_emotions) for _ in sequences]  # empty texts stay so
    order = sorted((i for i, s in enumerate(sequences) if s[1]),
                   key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_params(model) else {}
    device = next(model.parameters()).device
    with progress_bar(progress, "metering", len(order)) as advance, \
            projecting(model, site, directions) as proj:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)  # (batch, pos)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for k, r in enumerate(rows):
                ids[k, width - len(r):] = torch.tensor(r)
                mask[k, width - len(r):] = 1
            model(**forward_kwargs(model, ids.to(device), mask.to(device)), use_cache=False,
                  **extra)
            stacked = torch.stack([proj[layer] for layer in layers], dim=2).cpu()
            for k, i in enumerate(chunk):  # stacked: (batch, pos, layers, emotions)
                n_prefix, n = len(sequences[i][0]), len(sequences[i][1])
                pad = width - len(rows[k])
                where = [pad + max(n_prefix - 1 + j, 0) for j in range(n)]
                out[i] = stacked[k, where]
            advance(len(chunk))
    return out


def sequence(tokenizer, text_or_messages: str | Sequence[Mapping[str, str]]) -> Piece:
    """(prefix ids, text ids): a plain text after the BOS token (or EOS, or nothing), or the
    last message of a conversation (an assistant answer) after the conversation before it."""
    if isinstance(text_or_messages, str):
        special = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        prefix = [] if special is None else [int(special)]
        return prefix, list(tokenizer(text_or_messages, add_special_tokens=False)["input_ids"])
    messages = [dict(m) for m in text_or_messages]
    if not messages or messages[-1].get("role") != "assistant":
        raise BadInputError("to meter a conversation, end it with the assistant message to "
                            "read: [..., {'role': 'assistant', 'content': ...}]")
    prompt = render_chat(tokenizer, messages[:-1]) if len(messages) > 1 else ""
    prefix = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    ids = list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    return prefix, ids


def read_texts(model: PreTrainedModel, tokenizer, texts: Sequence[str | Sequence[Mapping]],
               directions: Directions = None, batch_size: int = 16,
               progress: bool = False) -> list[Readings]:
    """`meter` for many texts (or conversations) at once, batched."""
    m = load_meter(model, directions)
    seqs = [sequence(tokenizer, t) for t in texts]
    projections = token_projections(model, m.site, m.band(), seqs, batch_size, progress)
    return [Readings(m.emotions, [tokenizer.decode([t]) for t in ids], m.calibrate(p.mean(1)),
                     tokenizer.decode(ids))
            for (_, ids), p in zip(seqs, projections, strict=True)]


def meter(model: PreTrainedModel, tokenizer, text_or_messages: str | Sequence[Mapping[str, str]],
          directions: Directions = None) -> Readings:
    """Per token, a 0-1 reading per emotion of a text (or of a conversation's last answer).

    Args:
        model, tokenizer: from `emosteer.load_model`.
        text_or_messages: a text, or messages ending with the assistant answer to read.
        directions: a Meter, a meter file, vectors with a shipped calibration, or None (the
            meter shipped for this model).

    Example:
        r = emosteer.meter(model, tok, "I can't stop smiling, we won!")
        max(r.mean(), key=r.mean().get)  # "joy"
    """
    return read_texts(model, tokenizer, [text_or_messages], directions)[0]


def generate_metered(model: PreTrainedModel, tokenizer, questions: Sequence[str], meter: Meter,
                     steering: AbstractContextManager | None = None, system: str | None = None,
                     cfg: GenerateConfig = GenerateConfig()) -> list[Readings]:
    """Answer each question with the meter reading every generated token (no extra pass).

    Seeded and batched as `generation.generate_text`, so the answers are the same text.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        questions: one answer each.
        meter: from `load_meter`.
        steering: an unentered context such as `emosteer.steer(model, joy, 1.0)`; it is
            entered after the meter's hooks, so the meter reads each site before it is steered.
        system: a system prompt (None: none).
        cfg: decoding settings.

    Example:
        [r.text for r in generate_metered(model, tok, ["How was it?"], load_meter(model))]
    """
    torch.manual_seed(cfg.seed)
    prompts = [chat_prompt(tokenizer, q, system) for q in questions]
    out: list[Readings] = []
    with metering(model, meter) as steps, steering or nullcontext():
        for i in range(0, len(prompts), cfg.batch_size):
            steps.clear()
            batch = generate(model, tokenizer, prompts[i:i + cfg.batch_size], cfg)
            values = torch.stack(steps, dim=1)  # (batch, passes, emotions)
            for k in range(batch.input_ids.shape[0]):
                keep = batch.response_mask[k, batch.prompt_len:].bool()
                ids = batch.input_ids[k, batch.prompt_len:][keep].tolist()
                out.append(Readings(meter.emotions, [tokenizer.decode([t]) for t in ids],
                                    values[k, :len(ids)],
                                    tokenizer.decode(ids, skip_special_tokens=True).strip()))
    return out
