"""Reading safetensors checkpoints: single files, sharded ones (``model.safetensors.index.json``), or
a checkpoint directory.

The reader is in C (``csrc/io/safetensors.c``) and treats every file as untrusted: the whole header is
validated when the file is opened (header size, strict JSON, dtypes, shapes, offsets inside the file,
sizes matching shapes, no overlapping tensors, shard names confined to the checkpoint's directory), and
a bad file raises :class:`eyecare.FormatError` (a ``ValueError``) naming the file and the problem.
Tensor data is never copied on open: :meth:`SafetensorsFile.get` returns read-only NumPy views of a
memory mapping.

Example::

    from eyecare.safetensors import open_safetensors

    with open_safetensors("checkpoints/eyecaregpt-3.8b") as ckpt:
        for name in ckpt.names():
            dtype, shape = ckpt.info(name)
        w = ckpt.get("language_model.lm_head.weight")        # np.ndarray (BF16 as uint16 bits)
        t = ckpt.to_device("language_model.lm_head.weight")  # eyecare Tensor, dtype as stored
"""
from __future__ import annotations

import os

import numpy as np

from . import _core

#: The type of the objects :func:`open_safetensors` returns. Its methods:
#:
#: - ``names()``: the tensor names, sorted; also ``len(f)``, ``name in f`` and ``iter(f)``.
#: - ``info(name) -> (dtype, shape)``: dtype as written in the file (``"BF16"``, ``"F32"``, ...).
#: - ``get(name) -> numpy.ndarray``: read-only, zero-copy where the data is aligned; BF16 comes back
#:   as uint16 bits (``eyecare.core.from_bfloat16`` converts); dtypes NumPy lacks (F8_*, F6_*, F4)
#:   raise FormatError.
#: - ``to_device(name) -> eyecare.Tensor``: F32, F16, BF16 and I32 as stored; other integer dtypes
#:   (I64 ...) converted to int32, raising ValueError for values out of range.
#: - ``metadata() -> dict[str, str]``: the ``__metadata__`` map (merged over shards).
#: - ``close()``, and use as a context manager. Arrays from ``get()`` stay valid after close.
#: - ``path``, ``closed``.
SafetensorsFile = _core.safetensors_file_type()

__all__ = ["SafetensorsFile", "open_safetensors", "save_safetensors", "LazyTensor"]


def open_safetensors(path: str | os.PathLike) -> SafetensorsFile:
    """Opens a safetensors checkpoint and validates all of its headers.

    ``path`` may be a ``.safetensors`` file, an index (``model.safetensors.index.json``), or a
    directory holding ``model.safetensors.index.json`` or ``model.safetensors`` (otherwise its only
    ``*.safetensors.index.json`` or ``*.safetensors`` file). A sharded checkpoint opens each shard once
    and presents all tensors as one collection.

    Raises ``OSError`` when the path cannot be opened and :class:`eyecare.FormatError` when a file is
    not a valid checkpoint (including an index that names a missing shard, or a directory without one).
    """
    return SafetensorsFile(path)


_NUMPY_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                 "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "bool": "BOOL"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
             "U32": 4, "BOOL": 1}


class LazyTensor:
    """A tensor whose values are made only when save_safetensors writes it (``load()`` returns the array),
    so that a converter holds one tensor's values at a time. ``shape`` and ``dtype`` (a safetensors dtype:
    "U8", "F16", ...) are known up front, for the header."""

    def __init__(self, shape, dtype: str, load):
        if dtype not in _ITEMSIZE:
            raise ValueError(f"unknown safetensors dtype {dtype!r}")
        self.shape, self.dtype, self.load = tuple(int(s) for s in shape), dtype, load

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE[self.dtype]
        for s in self.shape:
            n *= s
        return n


def _describe(name: str, value):
    """(dtype, shape, nbytes) of a value save_safetensors takes."""
    if isinstance(value, LazyTensor):
        return value.dtype, list(value.shape), value.nbytes
    if isinstance(value, tuple):
        array, dtype = value
        if dtype == "BF16" and array.dtype != np.uint16:
            raise ValueError(f"{name}: BF16 data must be given as uint16 bits")
    else:
        array = value
        dtype = _NUMPY_DTYPES.get(array.dtype.name)
        if dtype is None:
            raise ValueError(f"{name}: cannot store a {array.dtype} array in safetensors")
    return dtype, list(array.shape), array.nbytes


def _array(name: str, value, dtype: str, shape: list):
    if isinstance(value, LazyTensor):
        array = np.asarray(value.load())
        made = "BF16" if dtype == "BF16" and array.dtype == np.uint16 else _NUMPY_DTYPES.get(array.dtype.name)
        if list(array.shape) != shape or made != dtype:
            raise ValueError(f"{name}: made a {array.dtype} array of shape {list(array.shape)}, not {dtype} {shape}")
        return array
    return value[0] if isinstance(value, tuple) else value


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Writes a safetensors file (the converter's and ``eyecare make-tiny``'s writer; no torch needed).

    ``tensors`` maps names to NumPy arrays, to ``(uint16_array, "BF16")`` for bfloat16 bits (NumPy has no
    bfloat16), or to LazyTensor. Tensors are written one at a time. The file is written to a temporary name
    and renamed, so a failed write never leaves a truncated checkpoint behind."""
    import json

    header, offset, order = {}, 0, []
    for name in sorted(tensors):
        dtype, shape, nbytes = _describe(name, tensors[name])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        order.append(name)
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keeps the data section 8-byte aligned, as the reference writer does
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for name in order:
                array = np.ascontiguousarray(_array(name, tensors[name], header[name]["dtype"], header[name]["shape"]))
                f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
