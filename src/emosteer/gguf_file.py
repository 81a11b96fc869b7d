"""Read a GGUF file's keys and float tensors, every declared count and size checked first.

Each count (keys, tensors, array items, string bytes, tensor values) is checked against the
bytes left in the file before anything is allocated or read, as llama.cpp's
`gguf_init_from_file` does. The gguf package's GGUFReader trusts them: a 102-byte file that
declares an array of 2**60 items makes it allocate until memory runs out.

Only what a control vector needs is read: the string keys and the F32/F16 tensors asked for.
The layout (GGUF v2 and v3, either byte order): "GGUF", version u32, tensor count u64, key
count u64; each key a string, a value type u32 and the value; each tensor a name, n_dims u32,
n_dims u64 sizes, a ggml type u32 and an offset u64 into the data section, which starts at
the next multiple of `general.alignment` (32 by default) after the tensor table.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emosteer.errors import VectorFileError

__all__ = ["read_gguf_file"]

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # GGUF value type -> struct format
_STRING, _ARRAY = 8, 9
_FLOATS = {0: "f4", 1: "f2"}  # ggml types F32, F16: what control vectors hold
_MAX_DIMS = 4  # GGML_MAX_DIMS
_HEADER = 24  # magic, version, tensor count, key count
_MIN_KEY = 8 + 4 + 1  # the smallest key: its name's length, its type, a one-byte value
_MIN_TENSOR = 8 + 4 + 8 + 4 + 8  # the smallest tensor entry: name length, n_dims, one size,
# type, offset
_KEPT_STRING = 1 << 20  # longer string values are skipped, not decoded


class _Bad(Exception):
    """Why the file is not a readable GGUF; read_gguf_file says it with the path."""


class _Cursor:
    """Reads a buffer front to back; never past its end."""

    def __init__(self, data: mmap.mmap, order: str) -> None:
        self.data, self.order, self.pos = data, order, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def skip(self, n: int, what: str) -> int:
        """Advance n bytes; returns where they start."""
        if n > self.left():
            raise _Bad(f"{what} needs {n} bytes, but only {self.left()} are left in the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        fmt = self.order + fmt
        start = self.skip(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)

    def string(self, what: str) -> str | None:
        """A GGUF string (u64 length, bytes) as text; None when longer than _KEPT_STRING."""
        (n,) = self.unpack("Q", what)
        start = self.skip(n, what)
        if n > _KEPT_STRING:
            return None
        return self.data[start:start + n].decode("utf-8", errors="replace")


def read_gguf_file(path: str | Path, wanted: Callable[[str], bool],
                   ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(string keys, {name: float32 tensor}) of a GGUF file, for the tensors `wanted` names.

    A wanted tensor must be F32 or F16; its shape is numpy's order (ggml's reversed, trailing
    sizes of 1 dropped as ggml_n_dims does). Raises VectorFileError saying what does not fit.

    Example:
        keys, tensors = read_gguf_file("joy.gguf", lambda name: name.startswith("direction."))
    """
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path} does not exist: check the path")
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            if size < _HEADER:
                raise _Bad(f"{size} bytes, shorter than a GGUF header ({_HEADER} bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(data, wanted)
    except _Bad as err:
        raise VectorFileError(f"{path} is not a readable GGUF file ({err})") from None
    except OSError as err:
        raise VectorFileError(f"cannot read {path} ({err.strerror or err})") from None


def _parse(data: mmap.mmap, wanted: Callable[[str], bool],
           ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if data[:4] != b"GGUF":
        raise _Bad("no GGUF magic at its start")
    (version,) = struct.unpack_from("<I", data, 4)
    order = "<" if version in (2, 3) else ">"
    version = struct.unpack_from(order + "I", data, 4)[0]
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version}: versions 2 and 3 are read")
    cur = _Cursor(data, order)
    cur.pos = 8
    n_tensors, n_keys = cur.unpack("QQ", "the header")
    if n_keys * _MIN_KEY + n_tensors * _MIN_TENSOR > cur.left():
        raise _Bad(f"it declares {n_keys} keys and {n_tensors} tensors, more than its "
                   f"{len(data)} bytes can hold")
    strings, alignment = _keys(cur, n_keys)
    tables: dict[str, tuple[tuple[int, ...], int, int]] = {}
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}")
        if name is None or name in tables:
            raise _Bad(f"tensor {i}'s name is {'too long' if name is None else 'repeated'}")
        (n_dims,) = cur.unpack("I", f"tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS})")
        dims = cur.unpack(f"{n_dims}Q", f"tensor {name!r}'s sizes")
        kind, offset = cur.unpack("IQ", f"tensor {name!r}")
        tables[name] = (dims, kind, offset)
    start = -(-cur.pos // alignment) * alignment  # the data section
    tensors = {name: _tensor(data, order, name, *table, start, alignment)
               for name, table in tables.items() if wanted(name)}
    return strings, tensors


def _keys(cur: _Cursor, n_keys: int) -> tuple[dict[str, str], int]:
    """The string values of the keys (others are skipped), and the data alignment."""
    strings: dict[str, str] = {}
    seen: set[str] = set()
    alignment = 32
    for i in range(n_keys):
        key = cur.string(f"the name of key {i}")
        if key is None or key in seen:
            raise _Bad(f"key {i}'s name is {'too long' if key is None else 'repeated'}")
        seen.add(key)
        (kind,) = cur.unpack("I", f"the type of key {key!r}")
        if kind == _STRING:
            text = cur.string(f"the value of key {key!r}")
            if text is not None:
                strings[key] = text
        elif kind in _SCALARS:
            (value,) = cur.unpack(_SCALARS[kind], f"the value of key {key!r}")
            if key == "general.alignment":
                if kind != 4 or value <= 0 or value & (value - 1):
                    raise _Bad(f"general.alignment {value!r} is not a power of two (u32)")
                alignment = value
        elif kind == _ARRAY:
            _skip_array(cur, key)
        else:
            raise _Bad(f"key {key!r} has unknown value type {kind}")
    return strings, alignment


def _skip_array(cur: _Cursor, key: str) -> None:
    """Step over an array value, its count checked against the bytes left first."""
    item, count = cur.unpack("IQ", f"the array of key {key!r}")
    if item in _SCALARS:
        size = struct.calcsize(cur.order + _SCALARS[item])
        cur.skip(count * size, f"the array of key {key!r} ({count} items of {size} bytes)")
    elif item == _STRING:
        if count * 8 > cur.left():
            raise _Bad(f"key {key!r} declares {count} strings, more than the {cur.left()} "
                       "bytes left in the file can hold")
        for _ in range(count):
            (n,) = cur.unpack("Q", f"a string of key {key!r}")
            cur.skip(n, f"a string of key {key!r}")
    else:
        raise _Bad(f"key {key!r} is an array of value type {item}: arrays of numbers or "
                   "strings are read")


def _tensor(data: mmap.mmap, order: str, name: str, dims: tuple[int, ...], kind: int,
            offset: int, start: int, alignment: int) -> torch.Tensor:
    """A wanted tensor's values as float32, after its size and place are checked."""
    if kind not in _FLOATS:
        raise _Bad(f"tensor {name!r} is of ggml type {kind}; F32 (0) or F16 (1) is read")
    count = 1
    for d in dims:
        count *= d
    dtype = np.dtype(order + _FLOATS[kind])
    end = start + offset + count * dtype.itemsize
    if offset % alignment or end > len(data):
        raise _Bad(f"tensor {name!r} declares {count} values at offset {offset}, "
                   f"{'not aligned' if offset % alignment else 'past the end of the file'}")
    shape = list(dims)
    while len(shape) > 1 and shape[-1] == 1:  # ggml_n_dims: trailing sizes of 1 do not count
        shape.pop()
    values = np.frombuffer(data[start + offset:end], dtype=dtype).astype(np.float32)
    return torch.from_numpy(values.reshape(shape[::-1]))
