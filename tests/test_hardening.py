"""Hardening (issue 7): the device-memory budget and out-of-device-memory errors, and regression tests for the parser
bugs the fuzz harnesses (fuzz/) found. Every input that crashed, hung or leaked memory before its fix is here, run
through the Python API, next to its raw bytes in fuzz/regressions/ (replayed by `make fuzz-smoke`).

Memory figures come from eyecare._core.device_info(): memory_in_use (bytes of live tensors) and memory_reserved (bytes
of device memory eyecare holds in blocks; the budget caps this)."""
import io
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

import eyecare
from eyecare import _core

ROOT = pathlib.Path(__file__).resolve().parents[1]
MiB = 1 << 20


def memory():
    info = _core.device_info()
    return info["memory_in_use"], info["memory_reserved"]


@pytest.fixture
def budget():
    """Sets a budget for the test and removes it afterwards, whatever happens."""
    _core.device_info()
    yield _core.set_memory_budget
    _core.set_memory_budget(0)


def run_python(code, env_extra=None, timeout=180):
    """Runs code in a fresh interpreter that imports this checkout's eyecare (a budget from the environment, or a
    lowered address-space limit, must not leak into the test process)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


# ---------------------------------------------------------------------------------------------------------------
# Parser regressions (fuzz/regressions/ holds the raw inputs)


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def jpeg(w=24, h=16):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 10 % 256, y * 15 % 256, (x + y) * 7 % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return bytearray(buf.getvalue())


def test_jpeg_fill_bytes_before_soi_do_not_hide_an_oversized_huffman_table():
    # Out-of-bounds write in stb_image 2.27's stbi__build_huffman: the check that refuses Huffman tables of more than
    # 256 symbols looked for the JPEG signature only at offset 0, but stb accepts 0xFF fill bytes before SOI.
    data = jpeg()
    dht = data.index(b"\xff\xc4")
    data[dht + 5:dht + 21] = b"\x20" * 16  # 16 lengths x 32 codes = 512 symbols
    for prefix in (b"", b"\xff", b"\xff" * 7):
        with pytest.raises(eyecare.FormatError, match="Huffman"):
            _core.decode_image(prefix + bytes(data))
    # Fill bytes alone are fine: the file still decodes.
    assert _core.decode_image(b"\xff\xff" + bytes(jpeg())[1:]).shape == (16, 24, 3)


def test_jpeg_scan_using_an_undefined_huffman_table_is_deterministic():
    # Out-of-bounds read from uninitialized heap: stb 2.27 decodes a scan with whatever Huffman table memory holds
    # when no DHT defined the table it names (heap garbage gave indices far outside the table). stb's allocations are
    # now zeroed, and a zeroed table decodes nothing: an error, every time. (Whether the unfixed code crashed here
    # depended on the heap's contents; fuzz/regressions/ replays the file with the heap filled with 0xFF, under ASan and
    # under MemorySanitizer, which catch it every time.)
    data = jpeg()
    sos = data.index(b"\xff\xda")
    for c in range(data[sos + 4]):
        data[sos + 6 + 2 * c] = 0x33  # DC and AC tables 3, which the file never defines
    for _ in range(20):
        with pytest.raises(eyecare.FormatError):
            _core.decode_image(bytes(data))


def palette_png(palette_entries, indices):
    h, w = indices.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in indices.astype(np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + png_chunk(b"PLTE", bytes(palette_entries)) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def palette_bmp(palette_bgrx, indices, offset=None):
    h, w = indices.shape
    rows = b"".join(row.astype(np.uint8).tobytes() + bytes(-w % 4) for row in indices[::-1])
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, len(rows), 2835, 2835, len(palette_bgrx) // 4, 0)
    offset = 14 + 40 + len(palette_bgrx) if offset is None else offset
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + bytes(palette_bgrx) + rows


def test_palette_index_past_the_palette_is_black_not_stack_memory():
    # Information leak (uninitialized stack memory in decoded pixels): stb 2.27 expands PNG and BMP palette images
    # through a 256-entry palette on its stack, filled only as far as the file's palette goes (nothings/stb#1861,
    # #1929). A one-color palette and every index 0..255 gave hundreds of stack bytes in the pixels. Such pixels are
    # now black, as libpng and PIL decode them.
    indices = np.arange(256).reshape(4, 64)
    png = palette_png([10, 20, 30], indices)
    bmp = palette_bmp([30, 20, 10, 0, 60, 50, 40, 0], indices)
    expected = np.zeros((4, 64, 3), np.uint8)
    expected[indices == 0] = [10, 20, 30]
    for data in (png, bmp):
        pixels = _core.decode_image(data)
        want = expected.copy()
        if data is bmp:
            want[indices == 1] = [40, 50, 60]
        np.testing.assert_array_equal(pixels, want)
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    # Full palettes and truecolor files are decoded from the caller's bytes as before.
    full = palette_png(list(range(256)) * 3, indices)
    assert _core.decode_image(full)[0, 5].tolist() == [15, 16, 17]


def test_bmp_whose_pixels_start_inside_the_header_is_refused():
    # The same leak with no palette at all: a pixel offset before the end of the header gives stb a negative palette
    # size, which passes its check; every pixel then came from the stack.
    indices = np.arange(32).reshape(4, 8)
    for offset in (14, 40, 53):
        with pytest.raises(eyecare.FormatError, match="palette"):
            _core.decode_image(palette_bmp([30, 20, 10, 0], indices, offset=offset))


def test_every_fuzz_regression_input_is_handled():
    """The raw inputs of fuzz/regressions/ through the Python API: decoded or refused with FormatError/ValueError."""
    inputs = sorted((ROOT / "fuzz" / "regressions").glob("fuzz_image*/*"))
    assert inputs
    for path in inputs:
        try:
            pixels = _core.decode_image(path.read_bytes(), max_pixels=1 << 22)
        except (eyecare.FormatError, ValueError):
            continue
        assert pixels.ndim == 3 and pixels.shape[2] == 3
