"""EmotionCircuit: the heads and neurons that write each emotion, as a file, and modulation.

Per emotion a circuit holds its components (kind, layer, index), their scores and the shift
each one carries when the model expresses the emotion (the mean projection input under the
emotion minus the mean over emotions: head_dim numbers for a head, one for a neuron).
Modulating adds strength x that shift to those components, so the emotion is expressed with
no emotion word in the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from emosteer.bounds import check_alpha
from emosteer.circuits.components import KINDS, Edit, Parts, editing, parts
from emosteer.errors import BadInputError, UnknownEmotionError, VectorFileError, VectorMismatchError
from emosteer.models import Architecture, model_shape
from emosteer.steering import Positions
from emosteer.vector_files import made_for, read_safetensors, shape_differences, write_safetensors

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FORMAT_VERSION = "1"
FILE_KIND = "emotion_circuit"
_FIELDS = ("layer", "index", "score", "shift")


@dataclass(frozen=True)
class Components:
    """One kind of component of one emotion's circuit; row i describes one component."""

    layer: torch.Tensor  # (n,) int64
    index: torch.Tensor  # (n,) int64: head or neuron number within the layer
    score: torch.Tensor  # (n,) float32: its share of the emotion (global ranking)
    shift: torch.Tensor  # (n, width) float32: width head_dim for heads, 1 for neurons

    def __len__(self) -> int:
        return self.layer.numel()


@dataclass(frozen=True, eq=False)
class EmotionCircuit:
    """circuits[emotion][kind] -> Components; meta: string metadata (model shape, budget...).

    Example:
        circuit = EmotionCircuit.load("circuits/circuit.safetensors")
        with emosteer.modulate(model, circuit, "fear", strength=1.0): ...
    """

    circuits: Mapping[str, Mapping[str, Components]]
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "circuits", MappingProxyType(
            {e: MappingProxyType(dict(kinds)) for e, kinds in self.circuits.items()}))
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in self.meta.items()})

    @property
    def emotions(self) -> list[str]:
        return list(self.circuits)

    def size(self, emotion: str) -> dict[str, int]:
        return {kind: len(c) for kind, c in self.of(emotion).items()}

    def of(self, emotion: str) -> Mapping[str, Components]:
        if emotion not in self.circuits:
            raise UnknownEmotionError(f"unknown emotion {emotion!r} for this circuit: choose "
                                      f"from {', '.join(self.circuits)}")
        return self.circuits[emotion]

    def equal(self, other: EmotionCircuit) -> bool:
        a, b = self.tensors(), other.tensors()
        return (self.meta == other.meta and a.keys() == b.keys()
                and all(torch.equal(v, b[k]) for k, v in a.items()))

    # --- compatibility -----------------------------------------------------------------------
    def check_model(self, model: PreTrainedModel, p: Parts, arch: Architecture | None = None,
                    allow_other_model: bool = False) -> None:
        shape = {**model_shape(model, arch), "n_heads": str(p.n_heads),
                 "head_dim": str(p.head_dim), "n_neurons": str(p.n_neurons)}
        diffs = shape_differences(self.meta, shape, allow_other_model)
        if diffs:
            raise VectorMismatchError(
                f"circuit {made_for(self.meta, shape)} ({'; '.join(diffs)}): run `emosteer "
                "discover --model ...` for this model")

    # --- files -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{e}.{kind}.{name}": getattr(c, name).contiguous()
                for e, kinds in self.circuits.items() for kind, c in kinds.items()
                for name in _FIELDS}

    def save(self, path: str | Path) -> Path:
        meta = {"format_version": FORMAT_VERSION, "kind": FILE_KIND,
                "emotions": ",".join(self.circuits), **self.meta}
        return write_safetensors(path, self.tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> EmotionCircuit:
        path = Path(path)
        meta, tensors = read_safetensors(path, "circuit", "emosteer discover")
        if meta.get("kind") != FILE_KIND or meta.get("format_version") != FORMAT_VERSION:
            raise VectorFileError(f"{path} is not an emosteer circuit file (kind "
                                  f"{meta.get('kind')!r}, format_version "
                                  f"{meta.get('format_version')!r}): create one with "
                                  "`emosteer discover`")
        circuits: dict[str, dict[str, Components]] = {}
        try:
            for emotion in filter(None, meta.get("emotions", "").split(",")):
                circuits[emotion] = {}
                for kind in KINDS:
                    fields = {n: tensors[f"{emotion}.{kind}.{n}"] for n in _FIELDS}
                    if not all(torch.isfinite(v.float()).all() for v in fields.values()):
                        raise VectorFileError(f"{path} contains NaN or infinite values")
                    circuits[emotion][kind] = Components(**fields)
        except KeyError as err:
            raise VectorFileError(f"{path} lacks tensor {err}: re-create it with "
                                  "`emosteer discover`") from None
        return cls(circuits, meta)


def build(scores: Mapping[str, Mapping[str, torch.Tensor]],
          shifts: Mapping[str, torch.Tensor], emotions: list[str], budget: int, p: Parts,
          meta: Mapping[str, object]) -> EmotionCircuit:
    """The top `budget` components of each emotion across layers and kinds.

    scores[emotion][kind]: (layers, components) global scores; shifts[kind]: (emotions,
    layers, in) mean input shifts, from which each component's slice is kept.
    """
    circuits = {}
    for e, emotion in enumerate(emotions):
        flat = torch.cat([scores[emotion][kind].flatten() for kind in KINDS])
        top = torch.topk(flat, min(budget, flat.numel())).indices
        top = top[flat[top] > 0]  # only components that write the emotion
        n_heads = scores[emotion]["head"].numel()
        kinds = {}
        for kind, chosen in (("head", top[top < n_heads]), ("neuron", top[top >= n_heads] -
                                                           n_heads)):
            size = scores[emotion][kind].shape[1]
            width = p.head_dim if kind == "head" else 1
            layer, index = chosen // size, chosen % size
            shift = torch.stack([shifts[kind][e, int(x)].unflatten(0, (-1, width))[int(i)]
                                 for x, i in zip(layer, index, strict=True)]) \
                if len(chosen) else torch.zeros(0, width)
            kinds[kind] = Components(layer.long(), index.long(),
                                     scores[emotion][kind].flatten()[chosen].float(),
                                     shift.float())
        circuits[emotion] = kinds
    return EmotionCircuit(circuits, {**{k: str(v) for k, v in meta.items()},
                                     "budget": str(budget)})


def circuit_edits(p: Parts, circuit: EmotionCircuit, emotion: str, strength: float
                  ) -> dict[tuple[str, int], Edit]:
    """Edits adding strength x each component's shift to its slice of the projection input."""
    edits = {}
    for kind, comps in circuit.of(emotion).items():
        width = p.head_dim if kind == "head" else 1
        for layer in sorted(set(comps.layer.tolist())):
            add = torch.zeros(p.size(kind), width)
            rows = comps.layer == layer
            add[comps.index[rows]] = comps.shift[rows]
            edits[(kind, layer)] = Edit(torch.ones(1, add.numel()),
                                        strength * add.reshape(1, -1))
    return edits


@contextmanager
def modulate(model: PreTrainedModel, circuit: EmotionCircuit, emotion: str,
             strength: float = 1.0, positions: Positions = "all",
             arch: Architecture | None = None, allow_other_model: bool = False
             ) -> Iterator[None]:
    """Express `emotion` through its circuit in every forward pass inside the block.

    Args:
        model: the model the circuit was discovered on.
        circuit: from `emosteer discover` / `EmotionCircuit.load`.
        emotion: one of `circuit.emotions`.
        strength: multiplies each component's shift (checked like an alpha; 0 = unedited).
        positions: "all" (prompt and generated tokens) or "generated" (the newest position
            of each step, with the KV cache on).
        arch: overrides the architecture table entry.
        allow_other_model: accept another model id of the same shape.

    The model is restored on exit, errors included.

    Example:
        with emosteer.modulate(model, circuit, "fear", strength=1.0):
            print(emosteer.generate_text(model, tok, ["Tell me about your commute."]))
    """
    strength = check_alpha(strength)
    if positions not in ("all", "generated"):
        raise BadInputError(f"positions={positions!r}: use 'all' or 'generated'")
    p = parts(model, arch)
    circuit.check_model(model, p, arch, allow_other_model)
    edits = circuit_edits(p, circuit, emotion, strength) if strength else {}
    with editing(p, edits, last_only=positions == "generated"):
        yield
