"""Crafted files (issue 28): GGUF and safetensors vector files, meter files, huge values and
existing outputs. Each is refused at load time with one line and exit code 2 from the CLI
(an EmosteerError from the library), never a traceback, never unbounded memory, never a
written file holding inf; property tests build files from the formats' own structure."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from emosteer.bounds import MAX_VALUE
from emosteer.cli import main
from emosteer.emotion_meter.meter import Meter
from emosteer.errors import BadInputError, EmosteerError, VectorFileError, VectorMismatchError
from emosteer.interop import export_gguf, read_gguf
from emosteer.models import model_shape
from emosteer.vector_files import FORMAT_VERSION
from emosteer.vectors import EmotionVector, mix

gguf = pytest.importorskip("gguf")
WIDTH, LAYERS = 64, 2  # the tiny llama of conftest
REPRO = (b"GGUF" + struct.pack("<IQQ", 3, 0, 2)  # issue 28's 102-byte file: an array of 2**60
         + struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<I", 8)
         + struct.pack("<Q", 13) + b"controlvector"
         + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**60))


def cli(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of `emosteer ARGS`, run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as stop:
        main(list(args))
    return int(stop.value.code or 0), err.getvalue().strip()


def one_line(*args: str) -> str:
    """The error line of a command that must fail as bad input."""
    code, err = cli(*args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny llama, a vector folder for it and a meter file over both layers."""
    root = tmp_path_factory.mktemp("files")
    model = tiny_model("llama")
    model.save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    model.emosteer_id = "tiny"
    shape = model_shape(model)
    g = torch.Generator().manual_seed(0)
    vectors = {e: EmotionVector({i: torch.randn(WIDTH, generator=g) for i in range(LAYERS)},
                                {**shape, "emotion": e, "site": "attn"})
               for e in ("joy", "anger")}
    for name, v in vectors.items():
        v.save(root / "vecs" / f"{name}.safetensors")
    Meter.from_vectors(vectors, [0, 1]).save(root / "meter.json", root / "vecs",
                                             write_vectors=False)
    return root


def vector_file(path: Path, tensors: dict[str, torch.Tensor], **meta: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "site": "attn", "emotion": "joy", **meta}
    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def gguf_file(path: Path, directions: dict[str, np.ndarray], **keys: str) -> Path:
    writer = gguf.GGUFWriter(str(path), "controlvector")
    for key, value in keys.items():
        writer.add_string(f"emosteer.{key}", value)
    for name, values in directions.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextlib.contextmanager
def memory_cap(extra: int = 1 << 30):
    """Address space limited to what this process maps now plus `extra` bytes inside."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- item 1: GGUF counts and sizes are checked against the file before anything is read ------
def test_the_102_byte_gguf_fails_in_one_line_within_bounded_memory(tmp_path):
    path = tmp_path / "a.gguf"
    path.write_bytes(REPRO)
    assert len(REPRO) == 102

    def cap():  # 1 GiB of address space: the old reader needed all the memory there was
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    out = subprocess.run([sys.executable, "-m", "emosteer", "import", str(path), "--out",
                          str(tmp_path / "a.safetensors")], capture_output=True, text=True,
                         preexec_fn=cap, timeout=120)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "2**60" not in err and "1152921504606846976 items" in err and "left in the file" in err
    assert not (tmp_path / "a.safetensors").exists()


@pytest.mark.parametrize(("name", "said"), [
    ("direction.²", "'direction.²' is not direction.<layer>"),  # int() would take it: ValueError
    ("direction.01", "'direction.01' is not direction.<layer>"),
    ("direction.-1", "is not direction.<layer>"),
    ("direction.70000", "past the last layer"),
])
def test_gguf_tensor_names_that_are_not_layers(tmp_path, name, said):
    path = gguf_file(tmp_path / "x.gguf", {"direction.1": np.ones(8, np.float32),
                                           name: np.ones(8, np.float32)})
    with pytest.raises(VectorFileError, match=re.escape(said)):
        read_gguf(path)
    assert said in one_line("import", str(path), "--out", str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


def _header(n_tensors: int, n_keys: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_keys)


def _s(text: bytes, n: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if n is None else n) + text


ARCH = _s(b"general.architecture") + struct.pack("<I", 8) + _s(b"controlvector")


@pytest.mark.parametrize(("data", "said"), [
    (_header(2**60, 1) + ARCH, "declares 1 keys and 1152921504606846976 tensors"),
    (_header(0, 2**62) + ARCH, "declares 4611686018427387904 keys"),
    (_header(0, 1) + _s(b"general.architecture", 2**62), "the name of key 0 needs"),
    (_header(0, 2) + ARCH + _s(b"k") + struct.pack("<IIQ", 9, 8, 2**59), "2**59"),
    (_header(0, 2) + ARCH + _s(b"k") + struct.pack("<IIQ", 9, 9, 1), "array of value type 9"),
    (_header(0, 2) + ARCH + _s(b"k") + struct.pack("<I", 13), "unknown value type 13"),
    (_header(0, 2) + ARCH + ARCH, "repeated"),
    (_header(1, 1) + ARCH + _s(b"direction.1") + struct.pack("<IQIQ", 1, 2**61, 0, 0),
     "past the end of the file"),
    (_header(1, 1) + ARCH + _s(b"direction.1") + struct.pack("<IQIQ", 1, 4, 0, 3),
     "not aligned"),
    (_header(1, 1) + ARCH + _s(b"direction.1") + struct.pack("<IQQQQQIQ", 5, 1, 1, 1, 1, 1, 0, 0),
     "5 dimensions"),
    (_header(1, 1) + ARCH + _s(b"direction.1") + struct.pack("<IQIQ", 1, 4, 2, 0),
     "ggml type 2"),
    (_header(0, 1, version=1) + ARCH, "GGUF version"),
    (b"GGUF" + b"\0" * 10, "shorter than a GGUF header"),
])
def test_crafted_gguf_structures_are_one_line(tmp_path, data, said):
    if said == "2**59":  # an array of 2**59 strings: refused before the first is read
        said = "declares 576460752303423488 strings"
    path = tmp_path / "x.gguf"
    path.write_bytes(data + (b"" if "shorter" in said else b"\0" * 64))
    with memory_cap():
        err = one_line("import", str(path), "--out", str(tmp_path / "x.safetensors"))
    assert said in err, err


def test_truncated_gguf_is_refused_at_every_cut(tmp_path):
    good = gguf_file(tmp_path / "good.gguf", {f"direction.{i}": np.full(8, i, np.float32)
                                              for i in (1, 2)}).read_bytes()
    cut = tmp_path / "cut.gguf"
    for end in range(0, len(good) - 1, 7):
        cut.write_bytes(good[:end])
        with pytest.raises(VectorFileError):
            read_gguf(cut)


def test_big_endian_gguf_reads_like_little_endian(tmp_path):
    values = {f"direction.{i}": np.arange(8, dtype=np.float32) * i for i in (1, 2)}
    little = gguf_file(tmp_path / "le.gguf", values)
    writer = gguf.GGUFWriter(str(tmp_path / "be.gguf"), "controlvector",
                             endianess=gguf.GGUFEndian.BIG)
    for name, v in values.items():
        writer.add_tensor(name, v.copy())  # the writer swaps the bytes itself
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    a, b = read_gguf(little), read_gguf(tmp_path / "be.gguf")
    assert a.layers == b.layers == [1, 2]
    for layer in a.layers:
        assert torch.equal(a.directions[layer], b.directions[layer])


# --- item 4: vector files get one check at load; the fit to a model is one function ---------
def _vectors(tmp_path) -> dict[str, Path]:
    ones, ints = torch.ones(WIDTH), torch.ones(WIDTH, dtype=torch.int32)
    return {
        "layer.abc": vector_file(tmp_path / "abc" / "joy.safetensors",
                                 {"layer.0": ones, "layer.abc": ones}),
        "layer.²": vector_file(tmp_path / "sup" / "joy.safetensors", {"layer.²": ones}),
        "different lengths": vector_file(tmp_path / "cut" / "joy.safetensors",
                                         {"layer.0": ones, "layer.1": ones[:10].clone()}),
        "NaN or infinite": vector_file(tmp_path / "nan" / "joy.safetensors",
                                       {"layer.0": ones * float("inf")}),
        "holds values up to 3e+38": vector_file(tmp_path / "huge" / "joy.safetensors",
                                                {"layer.0": ones * 3e38}),
        "expected a 1-D float vector": vector_file(tmp_path / "int" / "joy.safetensors",
                                                   {"layer.0": ints}),
        "but hidden_size 32": vector_file(tmp_path / "meta" / "joy.safetensors",
                                          {"layer.0": ones}, hidden_size="32"),
        "past the last layer": vector_file(tmp_path / "deep" / "joy.safetensors",
                                           {"layer.5": ones}, num_layers="2"),
        "metadata num_layers 'two'": vector_file(tmp_path / "word" / "joy.safetensors",
                                                 {"layer.0": ones}, num_layers="two"),
        "unknown site 'mlp'": vector_file(tmp_path / "site" / "joy.safetensors",
                                          {"layer.0": ones}, site="mlp"),
    }


def test_crafted_vector_files_are_refused_by_every_command(tiny, tmp_path):
    for said, path in _vectors(tmp_path).items():
        with pytest.raises(VectorFileError, match=re.escape(said)):
            EmotionVector.load(path)
        assert said in one_line("info", str(path))
        assert said in one_line("export", str(path), "--out", str(tmp_path / "x.gguf"))
        assert said in one_line("generate", "hi", "--model", str(tiny / "tiny"), "--vector",
                                str(path))
        assert said in one_line("serve", "--vectors", str(path.parent))  # before it listens
        from emosteer.vllm.bank import VectorBank

        with pytest.raises(VectorFileError, match=re.escape(said)):
            VectorBank.load(path.parent)
    assert not (tmp_path / "x.gguf").exists()


def test_names_are_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    import safetensors

    real, read = safetensors.safe_open, []

    class Spy:  # safe_open, recording which tensors are read
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            self.inner = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def metadata(self):
            return self.inner.metadata()

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    weights = tmp_path / "model.safetensors"
    save_file({"model.embed_tokens.weight": torch.ones(4, 4)}, str(weights))
    with pytest.raises(VectorFileError, match="not an emosteer vector file"):
        EmotionVector.load(weights)
    with pytest.raises(VectorFileError, match="layer.abc"):
        EmotionVector.load(vector_file(tmp_path / "abc.safetensors",
                                       {"layer.0": torch.ones(4), "layer.abc": torch.ones(4)}))
    assert read == []
    EmotionVector.load(vector_file(tmp_path / "ok.safetensors", {"layer.0": torch.ones(4)}))
    assert read == ["layer.0"]  # the spy sees reads


def test_the_fit_to_a_model_is_one_check_for_vectors_bank_and_meter(tiny):
    """check_model, the vLLM bank's check and the meter's check_shape say the same."""
    from emosteer.vllm.bank import VectorBank

    model = tiny_model("llama")
    model.emosteer_id = "tiny"
    shape = model_shape(model)
    deep = EmotionVector({0: torch.ones(WIDTH), 5: torch.ones(WIDTH)},
                         {**shape, "emotion": "joy", "site": "attn"})
    with pytest.raises(VectorMismatchError, match="layer 5 vs 2 layers") as one:
        deep.check_model(model)
    bank = VectorBank(tiny, {"joy": deep}, "x")
    with pytest.raises(VectorMismatchError, match="layer 5 vs 2 layers") as two:
        bank.check(shape)
    meter = Meter.from_vectors({"joy": deep}, [0, 5])
    with pytest.raises(VectorMismatchError, match="layer 5 vs 2 layers"):  # was not checked
        meter.check_model(model)
    assert str(one.value).split(":")[0].replace("vector 'joy'", "") == \
        str(two.value).split(":")[0].replace(f"vector 'joy' in {tiny}", "")
    other = {**shape, "model_id": "other"}
    with pytest.raises(VectorMismatchError, match="--force / allow_other_model=True"):
        EmotionVector({0: torch.ones(WIDTH)}, {**other, "site": "attn"}).check_model(model)
    with pytest.raises(VectorMismatchError, match="EMOSTEER_ALLOW_OTHER_MODEL=1"):
        VectorBank(tiny, {"joy": EmotionVector({0: torch.ones(WIDTH)}, other)}, "x").check(
            shape, allow_other_model=False)


def test_vectors_of_one_length_only():
    with pytest.raises(BadInputError, match="different lengths"):
        EmotionVector({0: torch.ones(4), 1: torch.ones(3)})


def _meter_variants(tiny) -> dict[str, str]:
    body = json.loads((tiny / "meter.json").read_text())
    cal = body["calibration"]
    variants = {
        "a JSON list": "[]",
        "a JSON str": '"hello"',
        "no 'mean' field": json.dumps({**body, "calibration": {
            k: v for k, v in cal.items() if k != "mean"}}),
        "layers must be distinct whole numbers": json.dumps({**body, "layers": [99999]}),
        "layers must be distinct whole numbers 0": json.dumps({**body, "layers": [-1]}),
        "layers must be distinct whole numbers 0.": json.dumps(body, indent=1).replace(
            '"layers": [\n  0', '"layers": [\n  1e400'),
        "not in this vector": json.dumps({**body, "layers": [0, 7]}),
        "weight holds values that are not finite": json.dumps({**body, "calibration": {
            **cal, "weight": [[1e38] * len(r) for r in cal["weight"]]}}),
        "bias holds values that are not finite": json.dumps(body, indent=1).replace(
            '"bias": [\n   0.0', '"bias": [\n   NaN'),
        "std holds a value <= 0": json.dumps({**body, "calibration": {
            **cal, "std": [0.0] * len(cal["std"])}}),
        "meter warmup": json.dumps({**body, "warmup": -1}),
        "card.vectors": json.dumps({**body, "card": []}),
    }
    assert "1e400" in variants["layers must be distinct whole numbers 0."]
    assert "NaN" in variants["bias holds values that are not finite"]
    return variants


def test_crafted_meter_files_are_one_line_in_meter_and_generate(tiny, tmp_path):
    assert Meter.load(tiny / "meter.json").layers == (0, 1)
    for k, (said, text) in enumerate(_meter_variants(tiny).items()):
        path = tiny / f"bad-{k}.json"  # beside the good one: its vectors folder resolves
        path.write_text(text)
        with pytest.raises(VectorFileError, match="not an emosteer meter file"):
            Meter.load(path)
        err = one_line("meter", "Some text.", "--model", str(tiny / "tiny"), "--meter-file",
                       str(path))
        assert said in err and "not an emosteer meter file" in err, (said, err)
    err = one_line("generate", "Hi", "--model", str(tiny / "tiny"), "--vector",
                   str(tiny / "vecs" / "joy.safetensors"), "--meter-file", str(path),
                   "--max-new-tokens", "2")
    assert "not an emosteer meter file" in err


# --- item 5: a scale or alpha times a vector never gives inf; the meter never reads one -----
def test_products_beyond_float32_are_refused_with_what_to_do(tiny, tmp_path):
    big = EmotionVector({0: torch.full((4,), 1e37), 1: torch.full((4,), -1e37)},
                        {"emotion": "joy", "site": "residual"})
    for make in (lambda: big * 100, lambda: 100 * big, lambda: big / 1e-40,
                 lambda: big.calibrated(100), lambda: big + big * 40,
                 lambda: mix({"joy": big, "anger": big.renamed("anger")},
                             {"joy": 30, "anger": 30})):
        with pytest.raises(BadInputError, match="overflows float32.*: use (a )?smaller"):
            make()
    with pytest.raises(BadInputError, match="overflows float32"):
        export_gguf(big, tmp_path / "big.gguf", scale=40)  # increments: 2e37 apart
    assert not (tmp_path / "big.gguf").exists()
    model = tiny_model("llama")
    model.emosteer_id = "tiny"
    v = EmotionVector({0: torch.full((WIDTH,), 1e37)}, {**model_shape(model), "site": "attn"})
    from emosteer.steering import steer

    with pytest.raises(BadInputError, match="overflows float32"), steer(model, v, alpha=100):
        pass
    assert not any(m._forward_hooks for m in model.modules())


def test_export_and_import_never_write_inf(tiny, tmp_path):
    huge = vector_file(tmp_path / "huge.safetensors", {"layer.1": torch.full((8,), 3e38)})
    assert "3e+38" in one_line("export", str(huge), "--scale", "2", "--out",
                               str(tmp_path / "h.gguf"))
    edge = vector_file(tmp_path / "edge.safetensors", {"layer.1": torch.full((8,), 3e36),
                                                       "layer.2": torch.full((8,), -3e36)},
                       site="residual")
    assert "overflows float32" in one_line("export", str(edge), "--scale", "100", "--out",
                                           str(tmp_path / "h.gguf"))
    assert not (tmp_path / "h.gguf").exists()
    res = gguf_file(tmp_path / "res.gguf", {f"direction.{i}": np.full(8, 3e38, np.float32)
                                            for i in (1, 2)})
    assert "3e+38" in one_line("import", str(res), "--out", str(tmp_path / "r.safetensors"))
    near = gguf_file(tmp_path / "near.gguf", {f"direction.{i}": np.full(8, 3e36, np.float32)
                                              for i in (1, 2)})  # each fits; their sum does not
    assert "6e+36" in one_line("import", str(near), "--out", str(tmp_path / "r.safetensors"))
    assert not (tmp_path / "r.safetensors").exists()


def test_the_meter_never_reads_a_non_finite_number(tiny):
    meter = Meter.load(tiny / "meter.json")
    soft = Meter(meter.vectors, meter.mean, meter.std, torch.ones(3, 4) * 1e6,
                 torch.zeros(3), link="softmax")
    f = meter.mean.numel()
    rows = torch.stack([torch.full((f,), 3e38), torch.tensor([3e38, -3e38] * (f // 2)),
                        torch.full((f,), float("nan")), torch.full((f,), float("inf")),
                        torch.randn(f)])
    for m in (meter, soft):
        readings = m.calibrate(rows)
        assert torch.isfinite(readings).all() and (readings >= 0).all() and (readings <= 1).all()
        assert torch.equal(readings[2], torch.zeros(2)) and torch.equal(readings[3],
                                                                        torch.zeros(2))


def test_the_vllm_bank_refuses_vectors_a_request_could_overflow(tmp_path):
    from emosteer.vllm.bank import VectorBank

    for name in ("joy", "anger"):
        vector_file(tmp_path / f"{name}.safetensors", {"layer.0": torch.full((8,), 3e36)})
    with pytest.raises(VectorFileError, match="would overflow float32"):
        VectorBank.load(tmp_path)
    (tmp_path / "anger.safetensors").unlink()
    assert VectorBank.load(tmp_path).names == ("joy",)


# --- item 10: export and import keep an existing --out unless --overwrite ------------------
def test_export_and_import_refuse_to_overwrite(tiny, tmp_path):
    joy = str(tiny / "vecs" / "joy.safetensors")
    out = tmp_path / "joy.gguf"
    out.write_bytes(b"keep me")
    assert "already exists: pass --overwrite" in one_line("export", joy, "--out", str(out))
    assert out.read_bytes() == b"keep me"
    assert cli("export", joy, "--out", str(out), "--overwrite")[0] == 0
    assert read_gguf(out).layers == [1]
    back = tmp_path / "back.safetensors"
    back.write_bytes(b"keep me too")
    assert "already exists: pass --overwrite" in one_line("import", str(out), "--out",
                                                          str(back))
    assert back.read_bytes() == b"keep me too"
    assert cli("import", str(out), "--out", str(back), "--overwrite")[0] == 0
    assert EmotionVector.load(back).layers == [1]


# --- property tests: files built from the formats' structure --------------------------------
# Half the files are honest (every count and size true, layer names valid, values moderate):
# each must load, with the values written. The others may lie anywhere (counts, sizes, names,
# shapes, types, values, a cut): each must load as a valid vector or fail in one line.
U64 = st.integers(0, 2**64 - 1)
LAYER = st.sampled_from(["0", "1", "2", "3"])
ODD = st.sampled_from(["²", "01", "-1", "", "x", "99999999999999999999", "70000"])
FUZZ = settings(max_examples=int(os.environ.get("EMOSTEER_FUZZ_EXAMPLES", 50)), deadline=None,
                database=None, derandomize=os.environ.get("EMOSTEER_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Maker:
    """Draws the parts of one file: true ones when honest, otherwise sometimes anything."""

    def __init__(self, draw):
        self.draw, self.honest = draw, draw(st.booleans())

    def count(self, true: int) -> int:
        """The count or size a file declares."""
        if self.honest:
            return true
        return self.draw(st.one_of(st.just(true), st.just(true), st.just(true), U64,
                                   st.integers(0, true + 16)))

    def either(self, good, bad):
        """A strategy: `good`, or when lying sometimes `bad`."""
        return good if self.honest else st.one_of(good, good, bad)

    def pick(self, good, bad):
        return self.draw(self.either(good, bad))

    def values(self, width: int) -> np.ndarray:
        moderate = st.floats(-1e3, 1e3, width=16)
        return np.array(self.draw(st.lists(self.either(moderate, st.floats(width=32)),
                                           min_size=width, max_size=width)), dtype=np.float64)

    def cut(self, body: bytes) -> bytes:
        return body if self.honest else body[:self.draw(st.one_of(
            st.just(len(body)), st.just(len(body)), st.integers(0, len(body))))]


@st.composite
def gguf_files(draw):
    """(file bytes, expected {layer: float32 values} when honest, its site)."""
    make = Maker(draw)
    order = draw(st.sampled_from("<>"))

    def pack(fmt, *values):
        return struct.pack(order + fmt, *values)

    def string(text: bytes) -> bytes:
        return pack("Q", make.count(len(text))) + text

    width = draw(st.integers(1, 6))
    layers = draw(st.lists(make.either(LAYER, ODD), min_size=1, max_size=4, unique=True))
    site = make.pick(st.sampled_from([None, "attn", "residual"]), st.just("mlp"))
    arch = make.pick(st.just("controlvector"), st.just("llama"))
    keys = [(b"general.architecture", pack("I", 8) + string(arch.encode()))]
    if site:
        keys.append((b"emosteer.site", pack("I", 8) + string(site.encode())))
    for i in range(draw(st.integers(0, 3))):  # other keys: scalars, strings and arrays
        kind = make.pick(st.sampled_from([0, 4, 6, 7, 10, 12, 8, 9]), st.sampled_from([9, 13]))
        name = f"other.{i}".encode() if make.honest else draw(st.binary(min_size=1, max_size=6))
        if kind == 9:
            item = make.pick(st.sampled_from([4, 8]), st.just(9))
            n = draw(st.integers(0, 3))
            items = b"".join(string(b"ab") if item == 8 else pack("I", 1) for _ in range(n))
            keys.append((name, pack("IIQ", 9, item, make.count(n)) + items))
        else:
            value = string(b"xyz") if kind == 8 else b"\1" * struct.calcsize(
                order + {0: "B", 4: "I", 6: "f", 7: "?", 10: "Q", 12: "d"}.get(kind, "Q"))
            keys.append((name, pack("I", kind) + value))
    table, data, values = b"", b"", {}
    for name in layers:
        ggml = draw(st.sampled_from([0, 1]))  # F32, F16
        v = make.values(width)
        with np.errstate(over="ignore", invalid="ignore"):  # inf in float16: a case too
            raw = v.astype(order + ("f4", "f2")[ggml]).tobytes()
            values[name] = v.astype(("f4", "f2")[ggml]).astype(np.float32)
        table += string(f"direction.{name}".encode()) + pack("I", 1) + pack(
            "Q", make.count(width)) + pack("IQ", ggml, make.count(len(data)))
        data += raw + b"\0" * (-len(raw) % 32)
    version = make.pick(st.sampled_from([2, 3]), st.sampled_from([1, 4]))
    head = b"GGUF" + pack("IQQ", version, make.count(len(layers)), make.count(len(keys)))
    body = head + b"".join(string(k) + v for k, v in keys) + table
    body = make.cut(body + b"\0" * (-len(body) % 32) + data)
    expected = {int(n): v for n, v in values.items()} if make.honest else None
    return body, expected, site or "residual"


@FUZZ
@given(gguf_files())
def test_property_gguf_files_load_correctly_or_fail_in_one_line(tmp_path_factory, case):
    data, expected, site = case
    tmp = tmp_path_factory.mktemp("fuzz-gguf")
    path = tmp / "x.gguf"
    path.write_bytes(data)
    with memory_cap():
        try:
            vector = read_gguf(path)
        except EmosteerError:
            vector = None
        code, err = cli("import", str(path), "--out", str(tmp / "x.safetensors"), "--overwrite")
    _one_line_or_loaded(code, err, vector, expected)
    if code == 2:
        return
    written = EmotionVector.load(tmp / "x.safetensors")
    assert written.layers == vector.layers and all(
        torch.equal(written.directions[k], v) for k, v in vector.directions.items())
    if expected is not None:
        adds = {k: torch.from_numpy(v) for k, v in sorted(expected.items())}
        if site == "residual":
            adds = dict(zip(adds, torch.cumsum(torch.stack(list(adds.values())), 0),
                            strict=True))
        assert vector.layers == sorted(adds)
        for layer, v in adds.items():
            torch.testing.assert_close(vector.directions[layer], v)


def _one_line_or_loaded(code: int, err: str, vector: EmotionVector | None,
                        expected: dict | None) -> None:
    """The CLI and the library agree; a refusal is one line; a load is a valid vector."""
    assert code in (0, 2) and "Traceback" not in err, err
    assert (code == 0) == (vector is not None), err
    event("honest" if expected is not None else "lying")
    event("loaded" if code == 0 else "refused")
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        assert expected is None, f"a well-formed file was refused: {err}"
        return
    assert vector is not None and len({v.numel() for v in vector.directions.values()}) == 1
    assert all(torch.isfinite(v).all() and v.abs().max() <= MAX_VALUE
               for v in vector.directions.values())
    assert math.isfinite(sum(vector.norms().values()))


DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "F64": ("<f8", 8), "I32": ("<i4", 4),
          "U8": ("u1", 1), "BOOL": ("?", 1), "BF16": (None, 2), "XX": (None, 4)}


@st.composite
def safetensors_files(draw):
    """(file bytes, expected {layer: float32 values} when honest)."""
    make = Maker(draw)
    width = draw(st.integers(1, 6))
    names = draw(st.lists(make.either(LAYER, st.one_of(ODD, st.just("weight"))).map(
        lambda n: n if n == "weight" else f"layer.{n}"), min_size=1, max_size=4, unique=True))
    meta = {"format_version": make.pick(st.just("1"), st.just("2")), "emotion": "joy"}
    for key, good, bad in (("site", ["attn", "residual"], ["mlp"]),
                           ("hidden_size", [str(width)], [str(width + 1), "wide", "0"]),
                           ("num_layers", ["4"], ["100000", "1", "-3"])):
        if draw(st.booleans()):
            meta[key] = make.pick(st.sampled_from(good), st.sampled_from(bad))
    header: dict = {"__metadata__": meta}
    data, values = b"", {}
    for name in names:
        dtype = make.pick(st.sampled_from(["F32", "F16", "F64"]), st.sampled_from(list(DTYPES)))
        v = make.values(width)
        code, size = DTYPES[dtype]
        with np.errstate(over="ignore", invalid="ignore"):
            raw = v.astype(code).tobytes() if code else draw(st.binary(
                min_size=width * size, max_size=width * size))
            values[name] = v.astype(code).astype(np.float32) if code else None
        shape = [make.count(width)] + ([] if make.honest else draw(st.sampled_from([[], [1]])))
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [make.count(len(data)), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    body = make.cut(struct.pack("<Q", make.count(len(text))) + text + data)
    expected = ({int(k.removeprefix("layer.")): v for k, v in values.items()}
                if make.honest else None)
    return body, expected


@FUZZ
@given(safetensors_files())
def test_property_vector_files_load_correctly_or_fail_in_one_line(tmp_path_factory, case):
    data, expected = case
    path = tmp_path_factory.mktemp("fuzz-st") / "joy.safetensors"
    path.write_bytes(data)
    with memory_cap():
        try:
            vector = EmotionVector.load(path)
        except EmosteerError:
            vector = None
        code, err = cli("info", str(path))
    _one_line_or_loaded(code, err, vector, expected)
    if expected is not None:
        assert vector is not None and vector.layers == sorted(expected)
        for layer, v in expected.items():
            assert torch.equal(vector.directions[layer], torch.from_numpy(v))
