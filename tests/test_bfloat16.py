"""eyecare.core.to_bfloat16 / from_bfloat16, which the op references, the converter and the tensor upload use,
against torch's float32 -> bfloat16 conversion (round to nearest, ties to even), bit for bit."""
import numpy as np
import torch

from eyecare.core import from_bfloat16, to_bfloat16


def torch_bits(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def as_float(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def check(values: np.ndarray):
    ours, want = to_bfloat16(values), torch_bits(values)
    nan = np.isnan(values)
    assert np.isnan(from_bfloat16(ours[nan])).all() and np.isnan(from_bfloat16(want[nan])).all()
    bad = np.flatnonzero((ours != want) & ~nan)
    assert bad.size == 0, [(hex(values.view(np.uint32)[i]), hex(ours[i]), hex(want[i])) for i in bad[:5]]


def test_random_bit_patterns():
    rng = np.random.default_rng(0)
    check(as_float(rng.integers(0, 2**32, 1 << 20, dtype=np.uint64)))


def test_ties_round_to_even_and_their_neighbours():
    # The upper 16 bits cover every exponent and both parities of the last kept bit; the lower 16 are exactly
    # half way (0x8000) or one unit either side.
    upper = np.arange(0, 1 << 16, 7, dtype=np.uint32)
    upper = np.concatenate([upper, upper + 1]) & 0xFFFF
    for low in (0x7FFF, 0x8000, 0x8001, 0x0000, 0xFFFF):
        check(as_float((upper << 16) | low))
    # Ties at the top of the range round up to infinity, as in torch.
    check(np.array([3.3961776e38, np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32))


def test_nan_inf_zero_and_subnormals():
    special = np.array([np.inf, -np.inf, 0.0, -0.0, np.nan, -np.nan], np.float32)
    payloads = as_float(np.array([0x7F800001, 0x7FBFFFFF, 0x7FC00001, 0xFF800001, 0xFFFFFFFF, 0x7F80FFFF], np.uint32))
    check(np.concatenate([special, payloads]))
    assert (to_bfloat16(payloads) & 0x7FFF > 0x7F80).all()  # a NaN never becomes infinity
    subnormal = as_float(np.arange(1, 1 << 23, 97, dtype=np.uint32))
    check(subnormal)
    check(-subnormal)
    smallest = as_float(np.array([1, 0x7FFF, 0x8000, 0x8001, 0x18000, 0x7FFFFF], np.uint32))
    check(np.concatenate([smallest, -smallest]))


def test_from_bfloat16_is_exact_for_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float32).numpy()
    ours = from_bfloat16(bits)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # Values already in bfloat16 come back unchanged.
    check(ours[~nan])
    assert np.array_equal(to_bfloat16(ours[~nan]), bits[~nan])
