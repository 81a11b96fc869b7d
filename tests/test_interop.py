"""Vectors to and from llama.cpp control-vector GGUF, repeng and steering-vectors layouts.

The peers are not installed (repeng pins numpy<2, steering-vectors transformers<5): their
objects and files are built here by hand in their documented layouts, and each conversion is
checked against a reference that adds the vectors the way that tool does."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import tiny_model

import emosteer
from emosteer.errors import BadInputError, VectorFileError
from emosteer.interop import (
    cumulative,
    export_gguf,
    from_repeng,
    from_steering_vectors,
    increments,
    read_gguf,
    to_repeng,
    to_steering_vectors,
)
from emosteer.models import model_shape
from emosteer.vectors import EmotionVector

gguf = pytest.importorskip("gguf")
IDS = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]])
LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_hidden_layers=LAYERS)


def vector(model, site="attn", seed=3, scale=0.5, layers=range(LAYERS)) -> EmotionVector:
    g = torch.Generator().manual_seed(seed)
    directions = {i: torch.randn(model.config.hidden_size, generator=g) * scale for i in layers}
    return EmotionVector(directions, {**model_shape(model), "site": site, "emotion": "joy",
                                      "method": "mean_diff"})


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def with_hooks(model, modules, additions: dict[int, torch.Tensor], alpha=1.0):
    """Reference: add `alpha * additions[l]` to the output of modules[l], as repeng,
    steering-vectors and llama.cpp do (first element when the output is a tuple)."""

    def adder(delta):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta
        return hook

    handles = [modules[layer].register_forward_hook(adder(alpha * torch.as_tensor(v)))
               for layer, v in additions.items()]
    try:
        return logits(model)
    finally:
        for h in handles:
            h.remove()


def write_repeng_gguf(path, model_type: str, directions: dict[int, np.ndarray]) -> None:
    """A file in the layout repeng's ControlVector.export_gguf writes."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_type)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@dataclass
class RepengControlVector:  # repeng.extract.ControlVector's fields
    model_type: str
    directions: dict[int, np.ndarray]


@dataclass
class SteeringVector:  # steering_vectors.SteeringVector's fields
    layer_activations: dict[int, torch.Tensor]
    layer_type: str = "decoder_block"


def test_increments_and_cumulative_invert_each_other():
    shifts = {1: torch.tensor([1.0, 2.0]), 3: torch.tensor([4.0, 0.0]), 4: torch.tensor([0., 1.])}
    adds = increments(shifts)
    assert torch.equal(adds[1], shifts[1]) and torch.equal(adds[3], torch.tensor([3.0, -2.0]))
    back = cumulative(adds)
    assert all(torch.allclose(back[k], shifts[k]) for k in shifts)


def test_export_gguf_has_llama_cpp_layout(model, tmp_path):
    vec = vector(model)
    path = export_gguf(vec, tmp_path / "joy.gguf", scale=2.0)
    reader = gguf.GGUFReader(str(path))

    def text(key):
        f = reader.fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert text("general.architecture") == "controlvector"
    assert text("controlvector.model_hint") == "llama"
    assert int(reader.fields["controlvector.layer_count"].parts[-1][0]) == LAYERS - 1
    assert text("emosteer.site") == "attn" and "residual" in text("emosteer.site_note")
    assert text("emosteer.dropped_layers") == "0"
    names = [t.name for t in reader.tensors]
    assert names == [f"direction.{i}" for i in range(1, LAYERS)]  # llama.cpp has no layer 0
    for t in reader.tensors:
        layer = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64]
        np.testing.assert_array_equal(t.data, (vec.directions[layer] * 2.0).numpy())


def test_gguf_round_trip_attn_and_residual(model, tmp_path):
    for site in ("attn", "residual"):
        vec = vector(model, site=site)
        back = read_gguf(export_gguf(vec, tmp_path / f"{site}.gguf"))
        assert back.site == site and back.layers == list(range(1, LAYERS))
        assert back.meta["model_id"] == vec.meta["model_id"] and back.emotion == "joy"
        for layer in back.layers:
            torch.testing.assert_close(back.directions[layer], vec.directions[layer])


def test_residual_export_is_what_llama_cpp_adds(model, tmp_path):
    """llama.cpp adds direction.l after layer l: steering with those additions equals
    emosteer.steer with the residual vector (layers >= 1)."""
    vec = vector(model, site="residual", layers=range(1, LAYERS))
    reader = gguf.GGUFReader(str(export_gguf(vec, tmp_path / "r.gguf")))
    additions = {int(t.name.split(".")[1]): torch.from_numpy(np.array(t.data))
                 for t in reader.tensors}
    layers = emosteer.models.decoder_layers(model)
    reference = with_hooks(model, layers, additions, alpha=1.5)
    with emosteer.steer(model, vec, 1.5):
        steered = logits(model)
    torch.testing.assert_close(steered, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, logits(model), atol=1e-3)


def test_repeng_gguf_file_imports_and_steers_like_repeng(model, tmp_path):
    rng = np.random.default_rng(0)
    dirs = {k: (rng.standard_normal(64) * 0.5).astype(np.float32) for k in (1, 2, 3)}
    path = tmp_path / "calm.gguf"
    write_repeng_gguf(path, "llama", dirs)
    vec = read_gguf(path)
    assert vec.site == "residual" and vec.layers == [1, 2, 3] and vec.emotion == "calm"
    assert vec.meta["architecture"] == "llama" and vec.hidden_size == 64
    reference = with_hooks(model, emosteer.models.decoder_layers(model), dirs, alpha=2.0)
    with emosteer.steer(model, vec, 2.0):
        torch.testing.assert_close(logits(model), reference, rtol=1e-5, atol=1e-5)


def test_repeng_object_round_trip_and_steering(model):
    rng = np.random.default_rng(1)
    cv = RepengControlVector("llama", {k: rng.standard_normal(64).astype(np.float32) * 0.3
                                       for k in range(LAYERS)})
    vec = from_repeng(cv, emotion="happy")
    assert vec.site == "residual" and vec.meta["architecture"] == "llama"
    reference = with_hooks(model, emosteer.models.decoder_layers(model), cv.directions)
    with emosteer.steer(model, vec, 1.0):
        torch.testing.assert_close(logits(model), reference, rtol=1e-5, atol=1e-5)
    back = to_repeng(vec)
    assert back.model_type == "llama" and set(back.directions) == set(cv.directions)
    for k, v in cv.directions.items():
        np.testing.assert_allclose(back.directions[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_type, site", [("self_attn", "attn"),
                                              ("decoder_block", "residual")])
def test_steering_vectors_object_steers_like_steering_vectors(model, layer_type, site):
    g = torch.Generator().manual_seed(5)
    sv = SteeringVector({k: torch.randn(64, generator=g) * 0.3 for k in (0, 2, 3)}, layer_type)
    vec = from_steering_vectors(sv, emotion="fear")
    assert vec.site == site and vec.layers == [0, 2, 3]
    modules = (emosteer.models.decoder_layers(model) if layer_type == "decoder_block"
               else [layer.self_attn for layer in model.model.layers])
    reference = with_hooks(model, modules, sv.layer_activations, alpha=-1.0)
    with emosteer.steer(model, vec, -1.0):
        torch.testing.assert_close(logits(model), reference, rtol=1e-5, atol=1e-5)
    back = to_steering_vectors(vec)
    assert back.layer_type == layer_type
    for k, v in sv.layer_activations.items():
        torch.testing.assert_close(back.layer_activations[k], v)


def test_refusals(model, tmp_path):
    with pytest.raises(BadInputError, match="mlp"):
        from_steering_vectors(SteeringVector({0: torch.zeros(64)}, "mlp"))
    with pytest.raises(BadInputError, match="ControlVector"):
        from_repeng(object())
    with pytest.raises(BadInputError, match="layer 0"):
        export_gguf(vector(model, layers=[0]), tmp_path / "x.gguf")
    other = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="not a control"):
        read_gguf(other)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(VectorFileError):
        read_gguf(junk)


def test_cli_export_then_import(model, tmp_path):
    vec = vector(model, site="residual")
    src = vec.save(tmp_path / "joy.safetensors")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "emosteer", *args], capture_output=True,
                              text=True, timeout=120)

    out = run("export", str(src), "--out", str(tmp_path / "joy.gguf"))
    assert out.returncode == 0, out.stderr
    out = run("import", str(tmp_path / "joy.gguf"), "--out", str(tmp_path / "back.safetensors"),
              "--emotion", "joy2")
    assert out.returncode == 0, out.stderr
    back = EmotionVector.load(tmp_path / "back.safetensors")
    assert back.emotion == "joy2" and back.site == "residual" and back.layers == [1, 2, 3]
    torch.testing.assert_close(back.directions[2], vec.directions[2])
    bad = run("import", str(src), "--out", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "GGUF" in bad.stderr


@pytest.mark.parametrize("command", ["export", "import", "serve"])
def test_new_commands_show_an_example(command):
    out = subprocess.run([sys.executable, "-m", "emosteer", command, "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Example:" in out.stdout
