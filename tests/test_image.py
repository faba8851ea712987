"""Image input in C (csrc/io/image.c through eyecare._core): decoding against PIL, hostile files, the pixel limit,
PIL-exact bicubic resizing and the view layout. No Vulkan device is involved.

Tolerances: lossless formats decode exactly as PIL does; JPEG within 4 levels of PIL (libjpeg-turbo), mean under
0.25, because the two decoders differ in chroma upsampling and IDCT rounding (4:2:2 chroma: 99.9 % within 3 levels,
at most 16 at sharp colour edges); the resize is bit-exact against Pillow >= 13."""
import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import eyecare  # noqa: E402
from eyecare import _core  # noqa: E402

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


# ---------------------------------------------------------------------------------------------------------------
# Test images


def scene(h, w, seed=0):
    """A natural-looking RGB image: gradients, a ripple, a disc with sharp edges, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + 2 * y) / 9.0)], -1)
    img[(y - h * 0.5) ** 2 + (x - w * 0.45) ** 2 < (min(h, w) * 0.3) ** 2] = [200, 40, 30]
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def make_png(arr, color_type, bit_depth, width=None, height=None):
    """A PNG written by hand (PIL cannot write 16-bit RGB); width/height may lie about the data."""
    h, w = arr.shape[:2]
    rows = arr.astype(">u2" if bit_depth == 16 else "u1").reshape(h, -1)
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", width or w, height or h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def make_psd(rgb):
    """A minimal 8-bit RGB Photoshop file with raw (uncompressed) planar data."""
    h, w, _ = rgb.shape
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0)
    return header + np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()


def make_hdr(rgbe, rle=False):
    """A Radiance HDR file: flat RGBE pixels, or per-channel run-length scanlines (needs width >= 8)."""
    h, w, _ = rgbe.shape
    out = bytearray(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (h, w))
    for y in range(h):
        if not rle:
            out += rgbe[y].tobytes()
            continue
        out += bytes([2, 2, w >> 8, w & 255])
        for c in range(4):  # a run of the first two values, then the rest dumped as literals
            row = rgbe[y, :, c]
            out += bytes([128 + 2, row[0]]) + bytes([w - 2]) + row[2:].tobytes()
    return bytes(out)


def hdr_to_ldr(rgbe):
    """stb_image's tone mapping: RGBE to linear float, gamma 1/2.2, scale 255, truncated after +0.5."""
    e = rgbe[..., 3].astype(np.int32)
    f = np.where(e[..., None] > 0, rgbe[..., :3] * np.ldexp(1.0, e - 136)[..., None], 0.0)
    return np.clip(np.power(f, 1 / 2.2) * 255 + 0.5, 0, 255).astype(np.uint8)


A = scene(67, 91)


def lossless_cases():
    im = Image.fromarray(A)
    frames = [im.quantize(64), Image.fromarray(255 - A).quantize(64)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    transparent = im.quantize(32)
    transparent.info["transparency"] = 3
    return {
        "png_rgb": encode(im, "PNG"),
        "png_gray": encode(im.convert("L"), "PNG"),
        "png_gray_alpha": encode(im.convert("LA"), "PNG"),
        "png_rgba": encode(Image.fromarray(np.dstack([A, A[..., 1]])), "PNG"),
        "png_palette": encode(im.quantize(64), "PNG"),
        "png_palette_transparency": encode(transparent, "PNG"),
        "png_1bit": encode(im.convert("1"), "PNG"),
        "bmp_24bit": encode(im, "BMP"),
        "bmp_palette": encode(im.quantize(16), "BMP"),
        "gif": encode(im.quantize(200), "GIF"),
        "gif_animated_first_frame": animated.getvalue(),
        "tga": encode(im, "TGA"),
        "tga_rle": encode(im, "TGA", compression="tga_rle"),
    }


LOSSLESS = lossless_cases()


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_lossless_formats_decode_exactly_as_pil(name):
    data = LOSSLESS[name]
    got = _core.decode_image(data)
    assert got.dtype == np.uint8 and got.shape == (67, 91, 3)
    np.testing.assert_array_equal(got, pil_rgb(data))


def test_png_16_bit_keeps_the_high_byte():
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    rgba16 = rng.integers(0, 65536, (20, 30, 4)).astype(np.uint16)
    gray16 = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
    for arr, color_type in ((rgb16, 2), (rgba16, 6)):
        data = make_png(arr, color_type, 16)
        got = _core.decode_image(data)
        np.testing.assert_array_equal(got, arr[..., :3] >> 8)
        np.testing.assert_array_equal(got, pil_rgb(data))  # PIL reads 16-bit RGB(A) to 8 bits the same way
    # 16-bit grayscale: the high byte, replicated. (PIL opens it as mode I;16 and its convert("RGB") clips values
    # to 255 instead, which whitens almost every image; the high byte is what every viewer shows.)
    got = _core.decode_image(make_png(gray16, 0, 16))
    np.testing.assert_array_equal(got, np.repeat((gray16 >> 8)[..., None], 3, axis=-1).astype(np.uint8))


@pytest.mark.parametrize("options", [dict(quality=90), dict(quality=75, progressive=True), dict(quality=95, subsampling=0),
                                     dict(quality=85, subsampling=1), "gray"])
def test_jpeg_is_close_to_pil(options):
    big = scene(240, 320, seed=3)
    im = Image.fromarray(big)
    data = encode(im.convert("L"), "JPEG", quality=90) if options == "gray" else encode(im, "JPEG", **options)
    got = _core.decode_image(data).astype(int)
    diff = np.abs(got - pil_rgb(data))
    assert diff.mean() <= 0.25, diff.mean()
    if options != "gray" and options.get("subsampling") == 1:
        # 4:2:2: stb_image and libjpeg-turbo upsample the horizontally halved chroma differently, which shows at
        # sharp colour edges: 99.9 % of samples within 3 levels, none beyond 16.
        assert np.percentile(diff, 99.9) <= 3 and diff.max() <= 16, (np.percentile(diff, 99.9), diff.max())
    else:
        assert diff.max() <= 4, diff.max()


def test_psd_and_hdr():
    rgb = scene(9, 13)
    np.testing.assert_array_equal(_core.decode_image(make_psd(rgb)), rgb)
    rng = np.random.default_rng(2)
    rgbe = rng.integers(0, 256, (6, 20, 4)).astype(np.uint8)
    rgbe[..., 3] = rng.integers(120, 134, (6, 20))
    flat = _core.decode_image(make_hdr(rgbe[:, :7]))  # width < 8: stored flat
    assert np.abs(flat.astype(int) - hdr_to_ldr(rgbe[:, :7])).max() <= 1
    rgbe[:, 1] = rgbe[:, 0]  # the first two pixels of each channel become one run
    rle = _core.decode_image(make_hdr(rgbe, rle=True))
    assert np.abs(rle.astype(int) - hdr_to_ldr(rgbe)).max() <= 1


def test_every_kind_of_source_gives_the_same_pixels(tmp_path):
    data = LOSSLESS["png_rgb"]
    path = tmp_path / "image.png"
    path.write_bytes(data)
    for source in (str(path), path, data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(_core.decode_image(source), A)


def test_decoded_array_owns_its_pixels():
    img = _core.decode_image(LOSSLESS["png_rgb"])
    assert img.flags.c_contiguous and img.flags.writeable and img.base is not None
    view = img[10:20]
    del img
    np.testing.assert_array_equal(view, A[10:20])


def test_threads_decode_and_resize_concurrently():
    """The GIL is released while C works; per-thread decoder state keeps concurrent calls apart."""
    from concurrent.futures import ThreadPoolExecutor

    sources = [LOSSLESS[name] for name in sorted(LOSSLESS)] * 4 + [b"corrupt"] * 8
    want = [pil_rgb(data) if data != b"corrupt" else None for data in sources]

    def work(data):
        try:
            return _core.resize_bicubic(_core.decode_image(data), 40, 30)
        except eyecare.FormatError:
            return None

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, sources))
    for got, ref in zip(results, want):
        if ref is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, _core.resize_bicubic(ref, 40, 30))


def test_decode_and_resize_release_the_gil():
    from gil import ran_during

    big = np.random.default_rng(5).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    assert ran_during(lambda: _core.decode_image(data)), "decode_image held the GIL"
    assert ran_during(lambda: _core.resize_bicubic(big, 800, 600)), "resize_bicubic held the GIL"


# ---------------------------------------------------------------------------------------------------------------
# Hostile input


def test_empty_data_and_empty_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for source in (b"", str(empty)):
        with pytest.raises(eyecare.FormatError, match="empty"):
            _core.decode_image(source)


def test_non_images_raise_format_error(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("This is a text file with an image extension.\n" * 20)
    rng = np.random.default_rng(0)
    for source in (str(text), rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), b"\x89PNG", b"GIF89a",
                   b"\xff\xd8\xff"):
        with pytest.raises(eyecare.FormatError):
            _core.decode_image(source)
    assert issubclass(eyecare.FormatError, ValueError)


TRUNCATABLE = {"png": LOSSLESS["png_rgb"], "jpeg": encode(Image.fromarray(A), "JPEG"),
               "jpeg_progressive": encode(Image.fromarray(A), "JPEG", progressive=True), "gif": LOSSLESS["gif"],
               "bmp": LOSSLESS["bmp_24bit"], "tga": LOSSLESS["tga"], "tga_rle": LOSSLESS["tga_rle"],
               "psd": make_psd(A), "hdr": make_hdr(np.full((3, 9, 4), 130, np.uint8)),
               "hdr_rle": make_hdr(np.full((3, 9, 4), 130, np.uint8), rle=True)}


@pytest.mark.parametrize("name", sorted(TRUNCATABLE))
def test_truncated_files_raise(name):
    data = TRUNCATABLE[name]
    n = len(data)
    # TGA files end with a 26-byte footer, GIF files with a 1-byte trailer: cut before those.
    for cut in sorted({1, 5, 11, 20, n // 4, n // 2, 3 * n // 4, n - 27}):
        with pytest.raises(eyecare.FormatError):
            _core.decode_image(data[:cut])


def test_corrupt_files_raise():
    png = LOSSLESS["png_rgb"]
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4:idat])[0]
    garbage_idat = png[:idat + 4] + b"\xff" * length + png[idat + 4 + length:]
    bad_depth = bytearray(png)
    bad_depth[24] = 7  # IHDR bit depth 7
    jpeg = bytearray(TRUNCATABLE["jpeg"])
    dht = jpeg.index(b"\xff\xc4")
    jpeg[dht + 5:dht + 21] = b"\x20" * 16  # a Huffman table declaring 16*32 = 512 symbols (overflows stb 2.27)
    hdr = TRUNCATABLE["hdr_rle"]
    cases = {"garbage IDAT": garbage_idat, "bit depth 7": bytes(bad_depth), "Huffman": bytes(jpeg),
             "HDR run-lengths": hdr[:hdr.index(b"+X 9\n") + 5 + 6]}
    for name, data in cases.items():
        with pytest.raises(eyecare.FormatError):
            _core.decode_image(data)
    with pytest.raises(eyecare.FormatError, match="Huffman"):
        _core.decode_image(bytes(jpeg))
    with pytest.raises(eyecare.FormatError, match="run-length"):
        _core.decode_image(cases["HDR run-lengths"])


def test_declared_size_over_the_pixel_limit_raises_before_decoding():
    tiny = np.zeros((2, 2, 3), np.uint8)
    huge_png = make_png(tiny, 2, 8, width=100000, height=100000)
    jpeg = bytearray(TRUNCATABLE["jpeg"])
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    gif = bytearray(LOSSLESS["gif"])
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    bmp = bytearray(LOSSLESS["bmp_24bit"])
    bmp[18:26] = struct.pack("<ii", 50000, 50000)
    psd = bytearray(make_psd(A))
    psd[14:22] = struct.pack(">II", 30000, 30000)
    for data in (huge_png, bytes(jpeg), bytes(gif), bytes(bmp), bytes(psd)):
        with pytest.raises(ValueError, match="max_pixels") as info:
            _core.decode_image(data)
        assert not isinstance(info.value, eyecare.FormatError)  # the limit, not a decoding failure
    png = LOSSLESS["png_rgb"]  # 91 x 67 = 6097 pixels
    with pytest.raises(ValueError, match="6097 pixels"):
        _core.decode_image(png, max_pixels=6096)
    assert _core.decode_image(png, max_pixels=6097).shape == (67, 91, 3)
    assert _core.decode_image(png, max_pixels=64e6).shape == (67, 91, 3)


def test_unreadable_paths_and_bad_arguments(tmp_path):
    with pytest.raises(OSError, match="No such file"):
        _core.decode_image(str(tmp_path / "missing.png"))
    with pytest.raises(OSError, match="not a regular file"):
        _core.decode_image(str(tmp_path))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    with pytest.raises(OSError, match="not a regular file"):
        _core.decode_image(str(fifo))
    for bad in (0, -1, 1.5, "many"):
        with pytest.raises((ValueError, TypeError)):
            _core.decode_image(LOSSLESS["png_rgb"], max_pixels=bad)
    with pytest.raises(TypeError):
        _core.decode_image(12345)


FUZZ_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from eyecare import _core
    seeds = [open(p, "rb").read() for p in sys.argv[2:]]
    rng = np.random.default_rng(int(sys.argv[1]))
    decoded = failed = 0
    for i in range(3000):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 9))):
            kind, pos = int(rng.integers(0, 5)), int(rng.integers(0, len(data)))
            if kind == 0: data[pos] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1: data[pos] = int(rng.integers(0, 256))
            elif kind == 2: data[pos] = int(rng.choice([0, 1, 0x7f, 0x80, 0xff]))
            elif kind == 3 and len(data) > 2: del data[max(1, pos):]
            else: data[min(pos, 63) % len(data)] = int(rng.integers(0, 256))
        try:
            img = _core.decode_image(bytes(data), max_pixels=1 << 22)
        except ValueError:
            failed += 1
            continue
        decoded += 1
        _core.make_views(img, int(rng.integers(1, 40)), (int(rng.integers(1, 4)), int(rng.integers(1, 4))))
    print(decoded, failed)
""")


def test_mutation_fuzz_never_crashes(tmp_path):
    seeds = []
    for name, data in [*LOSSLESS.items(), *TRUNCATABLE.items(), ("png16", make_png(np.zeros((5, 6, 3), np.uint16), 2, 16))]:
        path = tmp_path / f"seed_{name}"
        path.write_bytes(data)
        seeds.append(str(path))
    env = dict(os.environ, PYTHONPATH=str(Path(eyecare.__file__).resolve().parent.parent))
    result = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, "7", *seeds], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, f"decoder crashed (status {result.returncode}):\n{result.stderr[-3000:]}"
    decoded, failed = map(int, result.stdout.split())
    assert decoded + failed == 3000 and decoded > 100 and failed > 100


# ---------------------------------------------------------------------------------------------------------------
# Resize


RESIZES = [((67, 91), (384, 384)), ((1000, 700), (384, 384)), ((384, 384), (384, 384)), ((10, 10), (384, 384)),
           ((1, 1), (5, 7)), ((2000, 30), (384, 384)), ((30, 2000), (384, 384)), ((517, 333), (768, 1153)),
           ((5, 900), (3, 3)), ((300, 500), (300, 200)), ((500, 300), (200, 300)), ((1200, 800), (256, 700)),
           ((640, 480), (1152, 384))]


def vertical_first(src, dst):
    """Pillow 13 resamples vertically first when the image loses more than twice as many rows as columns."""
    (h, w), (oh, ow) = src, dst
    return h != oh and w != ow and h - oh > 0 and h - oh > 2 * (w - ow)


@pytest.mark.parametrize("src,dst", RESIZES)
def test_resize_is_bit_exact_with_pil(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    for img in (scene(*src), rng.integers(0, 256, (*src, 3), dtype=np.uint8)):
        got = _core.resize_bicubic(img, dst[1], dst[0])
        want = np.asarray(Image.fromarray(img).resize((dst[1], dst[0]), Image.BICUBIC))
        assert got.shape == (*dst, 3)
        if PILLOW_13 or not vertical_first(src, dst):
            np.testing.assert_array_equal(got, want)


def test_resize_accepts_views_and_rejects_bad_shapes():
    img = scene(50, 60)
    strided = img[::2, ::3]  # not contiguous: copied on the way in
    want = np.asarray(Image.fromarray(np.ascontiguousarray(strided)).resize((40, 30), Image.BICUBIC))
    np.testing.assert_array_equal(_core.resize_bicubic(strided, 40, 30), want)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            _core.resize_bicubic(bad, 8, 8)
    with pytest.raises(ValueError):
        _core.resize_bicubic(img, 0, 8)
    with pytest.raises(TypeError):
        _core.resize_bicubic(img.astype(np.int64), 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Views


def normalized(values, mean=0.5, std=0.5):
    """transformers' arithmetic: rescale in float64, round to float32, normalize in float32."""
    x = (np.asarray(values, np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.float32(mean)) / np.float32(std)


def test_views_are_raster_order_tiles_of_the_padded_resize():
    # 768 x 768 with four flat quadrants and grid 2x2: no resize, so each tile is one quadrant's colour.
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]  # top-left, top-right, bottom-left, bottom-right
    img = np.zeros((768, 768, 3), np.uint8)
    for i, c in enumerate(colours):
        img[(i // 2) * 384:(i // 2 + 1) * 384, (i % 2) * 384:(i % 2 + 1) * 384] = c
    views = _core.make_views(img, 384, (2, 2))
    assert views.shape == (5, 3, 384, 384) and views.dtype == np.float32
    for i, c in enumerate(colours):
        np.testing.assert_array_equal(views[1 + i], np.broadcast_to(normalized(c)[:, None, None], (3, 384, 384)))


def test_views_pad_centered_with_pad_color():
    # 100 x 300 (h x w) into a 1x2 grid of 384: fills the width (768), height ceil(100 * 2.56) = 256, so 64 rows
    # of padding above and below, as LLaVA-NeXT's resize_and_pad_image places it.
    img = np.full((100, 300, 3), 90, np.uint8)
    pad = (10, 200, 30)
    views = _core.make_views(img, 384, (1, 2), pad_color=pad)
    assert views.shape == (3, 3, 384, 384)
    canvas = np.concatenate([views[1], views[2]], axis=2)  # [3, 384, 768]
    pad_value = normalized(pad)[:, None, None]
    np.testing.assert_array_equal(canvas[:, :64], np.broadcast_to(pad_value, (3, 64, 768)))
    np.testing.assert_array_equal(canvas[:, 320:], np.broadcast_to(pad_value, (3, 64, 768)))
    np.testing.assert_array_equal(canvas[:, 64:320], np.full((3, 256, 768), normalized(90)))
    np.testing.assert_array_equal(views[0], np.full((3, 384, 384), normalized(90)))  # the global view: no padding


def test_view_normalization_matches_transformers_arithmetic():
    values = np.arange(256, dtype=np.uint8)
    img = np.stack([values.reshape(16, 16)] * 3, -1)
    views = _core.make_views(img, 16, (1, 1), mean=(0.1, 0.2, 0.3), std=(0.7, 0.8, 0.9))
    for c, (m, s) in enumerate(zip((0.1, 0.2, 0.3), (0.7, 0.8, 0.9))):
        np.testing.assert_array_equal(views[0, c], normalized(values, m, s).reshape(16, 16))


def test_make_views_rejects_bad_arguments():
    img = scene(20, 20)
    for kwargs in (dict(tile_size=0, grid=(1, 1)), dict(tile_size=16, grid=(0, 1)), dict(tile_size=16, grid=(65, 1)),
                   dict(tile_size=16, grid=(1, 1), pad_color=(0, 0, 256)),
                   dict(tile_size=16, grid=(1, 1), std=(0.5, 0.0, 0.5)), dict(tile_size=100000, grid=(1, 1))):
        with pytest.raises(ValueError):
            _core.make_views(img, **kwargs)
