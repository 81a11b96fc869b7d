"""EmotionVector algebra and bit-exact, checked file round trips."""

from __future__ import annotations

import pytest
import torch

from emosteer.errors import BadInputError, UnknownEmotionError, VectorFileError, VectorMismatchError
from emosteer.vector_files import FORMAT_VERSION
from emosteer.vectors import EmotionVector, mix

META = {"model_id": "m", "architecture": "llama", "hidden_size": "4", "num_layers": "3",
        "site": "attn"}


def vec(values, emotion="joy", **meta) -> EmotionVector:
    return EmotionVector({i: torch.tensor(v, dtype=torch.float32) for i, v in values.items()},
                         {**META, "emotion": emotion, **meta})


def test_algebra_known_answers():
    a = vec({0: [1.0, 2, 3, 4], 2: [0.5, 0, 0, 1]})
    b = vec({0: [1.0, 1, 1, 1], 1: [2.0, 0, 0, 0]}, emotion="anger")
    assert torch.equal((a + b).directions[0], torch.tensor([2.0, 3, 4, 5]))
    assert torch.equal((a + b).directions[1], torch.tensor([2.0, 0, 0, 0]))  # missing = zero
    assert torch.equal((a - b).directions[2], torch.tensor([0.5, 0, 0, 1]))
    assert torch.equal((2 * a).directions[0], (a + a).directions[0])
    assert torch.equal((-a).directions[0], torch.tensor([-1.0, -2, -3, -4]))
    assert torch.equal((a / 2).directions[2], torch.tensor([0.25, 0, 0, 0.5]))
    assert (a * 2 - b * 0.5).emotion == "(2*joy - 0.5*anger)"
    assert a.norms()[0] == pytest.approx(30 ** 0.5)


def test_vectors_are_immutable_values():
    values = torch.tensor([1.0, 2, 3, 4])
    a = EmotionVector({0: values}, META)
    values[0] = 100.0  # the caller's tensor is not the vector's
    with pytest.raises(AttributeError):
        a.meta = {}
    b = a * 3
    assert a.directions[0][0] == 1.0 and b.directions[0][0] == 3.0


def test_combining_vectors_of_different_models_fails():
    with pytest.raises(VectorMismatchError, match="hidden_size"):
        vec({0: [1.0] * 4}) + vec({0: [1.0] * 4}, hidden_size="5")


def test_mix_and_select():
    joy, anger = vec({0: [1.0, 0, 0, 0]}), vec({0: [0, 1.0, 0, 0]}, emotion="anger")
    m = mix({"joy": joy, "anger": anger}, {"joy": 1.0, "anger": -0.5})
    assert torch.equal(m.directions[0], torch.tensor([1.0, -0.5, 0, 0]))
    assert m.emotion == "1*joy + -0.5*anger"
    with pytest.raises(UnknownEmotionError, match="'rage'.*available are anger, joy"):
        mix({"joy": joy, "anger": anger}, {"rage": 1.0})
    with pytest.raises(BadInputError, match="finite"):
        mix({"joy": joy}, {"joy": float("nan")})
    three = vec({0: [1.0] * 4, 1: [2.0] * 4, 2: [3.0] * 4})
    assert three.select([1, 2]).layers == [1, 2]
    with pytest.raises(BadInputError, match="not in this vector"):
        three.select([7])


def test_save_load_round_trip_is_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = EmotionVector({i: torch.randn(4, generator=g) for i in range(3)},
                      {**META, "emotion": "fear", "dataset_sha256": "ab" * 32})
    loaded = EmotionVector.load(a.save(tmp_path / "fear.safetensors"))
    for layer in a.layers:
        assert torch.equal(loaded.directions[layer], a.directions[layer])
    assert loaded.meta["format_version"] == FORMAT_VERSION
    assert {k: loaded.meta[k] for k in a.meta} == dict(a.meta)
    assert {"emosteer_version", "created"} <= set(loaded.meta)
    again = EmotionVector.load(loaded.save(tmp_path / "again.safetensors"))
    assert again.equal(loaded)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    good = vec({0: [1.0, 2, 3, 4]}).save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-7])
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a tensor file")
    for path in (truncated, text):
        with pytest.raises(VectorFileError, match="not a readable safetensors file"):
            EmotionVector.load(path)
    with pytest.raises(VectorFileError, match="does not exist"):
        EmotionVector.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(VectorFileError, match="not an emosteer vector file"):
        EmotionVector.load(tmp_path / "model.safetensors")
    save_file({"layer.0": torch.tensor([1.0, float("nan")])}, str(tmp_path / "nan.safetensors"),
              metadata={"format_version": FORMAT_VERSION})
    with pytest.raises(VectorFileError, match="NaN"):
        EmotionVector.load(tmp_path / "nan.safetensors")
    assert good.read_bytes()  # the good file is untouched


def test_load_vectors_reads_a_folder_and_says_what_is_wrong(tmp_path):
    from emosteer.vectors import load_vectors

    vec({0: [1.0, 2, 3, 4]}).save(tmp_path / "joy.safetensors")
    vec({0: [0.0, 1, 0, 0]}, emotion="anger").save(tmp_path / "anger.safetensors")
    loaded = load_vectors(tmp_path)
    assert sorted(loaded) == ["anger", "joy"]
    assert torch.equal(loaded["joy"].directions[0], torch.tensor([1.0, 2, 3, 4]))
    with pytest.raises(VectorFileError, match="is a file"):
        load_vectors(tmp_path / "joy.safetensors")
    with pytest.raises(VectorFileError, match="no vector files.*--vectors"):
        load_vectors(tmp_path / "empty")


def test_mix_weights_obey_the_alpha_bound():
    joy = vec({0: [1.0, 0, 0, 0]})
    for weight in (1e9, 1e39, float("inf"), -101.0):
        with pytest.raises(BadInputError, match="weight for 'joy'"):
            mix({"joy": joy}, {"joy": weight})


def test_mismatch_message_names_two_different_models_or_says_does_not_fit():
    from emosteer.vector_files import made_for

    assert made_for({"model_id": "a"}, {"model_id": "b"}) == "was made for model 'a', not 'b'"
    assert made_for({"model_id": "a"}, {"model_id": "a"}) == "does not fit model 'a'"


def test_saving_is_atomic_and_refuses_a_directory(tmp_path):
    v = vec({0: [1.0, 2, 3, 4]})
    path = v.save(tmp_path / "joy.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["joy.safetensors"]  # no temp file left
    with pytest.raises(BadInputError, match="is a directory"):
        v.save(tmp_path)
    assert EmotionVector.load(path).equal(EmotionVector.load(path))


def test_saved_files_are_readable_by_others_like_any_file(tmp_path):
    path = vec({0: [1.0, 2, 3, 4]}).save(tmp_path / "joy.safetensors")
    assert path.stat().st_mode & 0o777 == 0o644


def test_calibrated_folds_the_strength_in_and_records_it(tmp_path):
    v = vec({0: [1.0, 2.0, 0.0, -1.0]}, emotion="anger")
    c = v.calibrated(1.5, method="trained")
    assert torch.equal(c.directions[0], v.directions[0] * 1.5)
    assert (c.emotion, c.meta["calibrated_strength"], c.meta["method"]) == ("anger", "1.5",
                                                                            "trained")
    assert c.calibrated(2.0).meta["calibrated_strength"] == "3"  # strengths multiply
    back = EmotionVector.load(c.save(tmp_path / "anger.safetensors"))
    assert torch.equal(back.directions[0], c.directions[0])
    assert back.meta["calibrated_strength"] == "1.5"
    from emosteer.errors import BadAlphaError
    for bad in (0.0, float("nan"), 1e9):
        with pytest.raises(BadAlphaError):
            v.calibrated(bad)
