"""The Python face of the Vulkan core: devices, device tensors and the conversions NumPy lacks
(bfloat16). Model code and tests build on these; the ops themselves are eyecare._core.op_*."""
from __future__ import annotations

import numpy as np

from . import _core

DTYPES = ("float32", "float16", "bfloat16", "int32")


def devices() -> list[dict]:
    """The Vulkan devices present, with their properties (index, name, type, memory, subgroup size...)."""
    return _core.devices()


def device_info() -> dict:
    """The device eyecare uses (EYECARE_DEVICE picks it by index or name), creating its context."""
    return _core.device_info()


def to_bfloat16(a) -> np.ndarray:
    """float32 values -> bfloat16 bits (uint16), rounding to nearest even as torch does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    out[nan] = 0x7FC0
    return out


def from_bfloat16(bits) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def tensor(array, dtype: str | None = None) -> "_core.Tensor":
    """A device tensor holding `array`. dtype defaults to the array's own (float64 becomes float32,
    integers int32); 'bfloat16' converts float values, or takes uint16 arrays as raw bfloat16 bits."""
    a = np.asarray(array)
    if dtype is None:
        if a.dtype == np.float16:
            dtype = "float16"
        elif np.issubdtype(a.dtype, np.floating):
            dtype = "float32"
        elif np.issubdtype(a.dtype, np.integer):
            dtype = "int32"
        else:
            raise TypeError(f"cannot make a device tensor from a {a.dtype} array")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == "bfloat16":
        a = a if a.dtype == np.uint16 else to_bfloat16(a)
    elif dtype == "int32":
        if a.size and (a.min() < -(2**31) or a.max() >= 2**31):
            raise ValueError("values do not fit in int32")
        a = a.astype(np.int32)
    else:
        a = a.astype(np.dtype(dtype))
    if a.ndim == 0:
        a = a.reshape(1)
    return _core.from_array(np.ascontiguousarray(a), dtype)


def empty(shape, dtype: str = "float32") -> "_core.Tensor":
    """An uninitialised device tensor."""
    return _core.empty(tuple(int(s) for s in shape), dtype)


def zeros(shape, dtype: str = "float32") -> "_core.Tensor":
    t = empty(shape, dtype)
    _core.op_zero(t)
    return t


def to_numpy(t: "_core.Tensor") -> np.ndarray:
    """The tensor's values as NumPy; bfloat16 comes back as float32 values."""
    a = t.numpy()
    return from_bfloat16(a) if t.dtype == "bfloat16" else a
