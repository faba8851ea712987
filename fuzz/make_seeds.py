"""Writes the seed corpora of the fuzz harnesses into fuzz/seeds/<harness>/: valid files of every kind each parser
accepts, then a few deterministic mutations of each (truncations, flipped and replaced bytes), so that fuzzing starts
from inside every format rather than having to discover it.

    python fuzz/make_seeds.py            # rewrites fuzz/seeds/ (needs numpy and Pillow, the test dependencies)

The output is deterministic and small (a few hundred KB), so it is checked in; `make fuzz` and `make fuzz-smoke` read
it directly and do not need this script.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
SHARD_SEPARATOR = b"\n==SHARD==\n"  # as in fuzz_safetensors_index.c
rng = random.Random(20240607)


def mutants(data: bytes, count: int) -> list[bytes]:
    """Truncations and a few overwritten or flipped bytes: the damage real downloads and crafted files show."""
    out = []
    for i in range(count):
        d = bytearray(data)
        kind = i % 3
        if kind == 0 and len(d) > 2:
            del d[rng.randrange(1, len(d)):]
        elif kind == 1 and d:
            for _ in range(rng.randint(1, 4)):
                d[rng.randrange(len(d))] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif d:
            for _ in range(rng.randint(1, 4)):
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        out.append(bytes(d))
    return out


def write_set(harness: str, files: dict[str, bytes], mutate: int) -> None:
    folder = os.path.join(SEEDS, harness)
    os.makedirs(folder)
    for name, data in sorted(files.items()):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        for i, m in enumerate(mutants(data, mutate)):
            with open(os.path.join(folder, f"{name}.mut{i}"), "wb") as f:
                f.write(m)


# ------------------------------------------------------------------------------------------------------------------
# JSON: configuration files and the corners of the grammar


def eyecare_config(llm: str) -> dict:
    vision = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
              "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
              "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06}
    if llm == "phi3":
        text = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "rms_norm_eps": 1e-05,
                "rope_theta": 10000.0, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.01, 1.02], "long_factor": [1.1, 2.5]},
                "bos_token_id": 1, "eos_token_id": [32000, 32007], "tie_word_embeddings": False}
    else:
        text = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rope_scaling": None,
                "sliding_window": None, "use_sliding_window": False}
    return {"model_type": "eyecaregpt", "architectures": ["EyecareGPTForConditionalGeneration"],
            "vision_config": vision, "text_config": text,
            "connector": {"feature_layer": -2, "groups": [[0, 13], [13, 26]], "projector": "mlp2x_gelu"},
            "adaptive_resolution": {"tile_size": 384, "grid_pinpoints": [[384, 768], [768, 384], [768, 768],
                                                                         [384, 1152], [1152, 384]],
                                    "tile_pool": 2, "pad_color": [127, 127, 127]},
            "image_token": "<image>", "torch_dtype": "bfloat16"}


def json_seeds() -> dict[str, bytes]:
    docs = {
        "config_phi3.json": json.dumps(eyecare_config("phi3"), indent=2).encode(),
        "config_qwen2.json": json.dumps(eyecare_config("qwen2")).encode(),
        "generation_config.json": b'{"do_sample": false, "max_new_tokens": 512, "eos_token_id": [32000, 32007],'
                                  b' "temperature": 0.0, "top_p": 1.0}',
        "index.json": json.dumps({"metadata": {"total_size": 7642159104},
                                  "weight_map": {"language_model.lm_head.weight": "model-00002-of-00002.safetensors",
                                                 "vision_tower.vision_model.post_layernorm.bias":
                                                     "model-00001-of-00002.safetensors"}}).encode(),
        "header.json": json.dumps({"__metadata__": {"format": "pt"},
                                   "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}).encode(),
        "strings.json": rb'["", "plain", "\"\\\/\b\f\n\r\t", "\u00e9\u4e2d\ud83d\ude00", "\u0000nul", "caf\xc3\xa9",'
                        rb' "\xf0\x9f\x98\x80", "\xe2\x82\xac", "\xf4\x8f\xbf\xbf"]',
        "numbers.json": b'[0, -0, 1, -1, 9223372036854775807, -9223372036854775808, 9223372036854775808, 1.5, -2.5e-3,'
                        b' 1e308, 1E-400, 0.1e+2, 123456789012345678901234567890, 2.2250738585072014e-308]',
        "literals.json": b'{"t": true, "f": false, "n": null, "nested": {"a": [[], {}, [[{}]]]}}',
        "whitespace.json": b' \t\r\n{ "k" : [ 1 , 2 ] } \n',
        "deep.json": b"[" * 60 + b"]" * 60,
        "deep_objects.json": b'{"a":' * 40 + b"1" + b"}" * 40,
        "many_keys.json": json.dumps({f"k{i:03d}": i for i in range(300)}).encode(),
        "scalar.json": b'"just a string"',
        "empty_object.json": b"{}",
    }
    return docs


# ------------------------------------------------------------------------------------------------------------------
# safetensors: every dtype the format defines, the shapes and layouts writers produce, and the corners of the header

DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
              "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
              "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4}


def safetensors_bytes(tensors: list[tuple[str, str, list[int]]], metadata=None, pad=True, extra=b"",
                      hole=0) -> bytes:
    """Lays tensors out back to back (with `hole` bytes between them) as the reference writer does: JSON header padded
    to 8 bytes with spaces, then the data. Data bytes are a deterministic pattern."""
    header, offset, data = {}, 0, bytearray()
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        size = n * DTYPE_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        data += bytes((offset + i * 7) & 0xFF for i in range(size)) + bytes(hole)
        offset += size + hole
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data) + extra


def safetensors_seeds() -> dict[str, bytes]:
    files = {}
    for dtype, bits in DTYPE_BITS.items():
        shape = [2, 4] if bits >= 8 else [4, 4]  # packed dtypes need a whole number of bytes
        files[f"dtype_{dtype}.safetensors"] = safetensors_bytes([("t", dtype, shape)])
    files["model_like.safetensors"] = safetensors_bytes(
        [("language_model.model.embed_tokens.weight", "BF16", [16, 8]),
         ("language_model.model.layers.0.self_attn.qkv_proj.weight", "BF16", [24, 8]),
         ("vision_tower.vision_model.embeddings.patch_embedding.weight", "F16", [4, 3, 2, 2]),
         ("connector.projector.0.bias", "F32", [8]), ("position_ids", "I64", [1, 5])],
        metadata={"format": "pt", "producer": "eyecare make_seeds"})
    files["shapes.safetensors"] = safetensors_bytes(
        [("scalar", "F32", []), ("empty", "F16", [0]), ("empty3", "F32", [3, 0, 2]), ("one", "U8", [1]),
         ("five_d", "I8", [1, 1, 1, 1, 2])])
    files["null_metadata.safetensors"] = safetensors_bytes([("x", "F32", [2])], metadata=None) \
        .replace(b'{"x"', b'{"__metadata__":null,"x"', 1)
    files["empty_header.safetensors"] = struct.pack("<Q", 8) + b"{}      "
    files["unpadded.safetensors"] = safetensors_bytes([("x", "I16", [3])], pad=False)
    files["holes_and_tail.safetensors"] = safetensors_bytes([("a", "F32", [2]), ("b", "F64", [1])], hole=5,
                                                            extra=b"trailing bytes")
    files["unicode_names.safetensors"] = safetensors_bytes([("caf\u00e9.w\u4e2d", "F32", [1]), ("a/b.c", "U8", [2])],
                                                           metadata={"\u00e9": "\U0001f600"})
    # Offsets out of order in the header, data in order: valid.
    text = b'{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    files["out_of_order.safetensors"] = struct.pack("<Q", len(text)) + text + b"\x01\x02\x03\x04"
    # Faults each check must catch (kept as seeds: mutation from near a check reaches its neighbours).
    files["overlap.safetensors"] = struct.pack("<Q", len(text)) + text.replace(b"[2,4]", b"[1,3]") + b"\x01\x02\x03\x04"
    files["length_past_end.safetensors"] = struct.pack("<Q", 1 << 20) + b'{"a":1}'
    files["size_mismatch.safetensors"] = safetensors_bytes([("x", "F32", [2])]).replace(b"[0,8]", b"[0,7]")
    return files


def index_seeds() -> dict[str, bytes]:
    s1 = safetensors_bytes([("a", "F32", [2]), ("b", "BF16", [3])], metadata={"format": "pt"})
    s2 = safetensors_bytes([("c", "I64", [1]), ("d", "F16", [2, 2])], metadata={"format": "np", "x": "y"})
    s3 = safetensors_bytes([("e", "U8", [0])])
    index = {"metadata": {"total_size": 48},
             "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors",
                            "d": "s2.safetensors", "e": "s3.safetensors"}}
    join = SHARD_SEPARATOR.join
    files = {"three_shards": join([json.dumps(index).encode(), s1, s2, s3])}
    two = {"weight_map": {k: v for k, v in index["weight_map"].items() if v != "s3.safetensors"}}
    files["two_shards"] = join([json.dumps(two, indent=1).encode(), s1, s2])
    files["one_shard"] = join([b'{"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}', s1])
    files["missing_shard"] = join([json.dumps(index).encode(), s1])
    files["escape_attempt"] = join([b'{"weight_map": {"a": "../s1.safetensors"}}', s1])
    files["tensor_not_in_shard"] = join([b'{"weight_map": {"zz": "s1.safetensors"}}', s1])
    files["empty_weight_map"] = b'{"weight_map": {}}'
    return files


# ------------------------------------------------------------------------------------------------------------------
# Images: every format and pixel layout stb_image decodes for eyecare


def test_image(w: int, h: int, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 37) % 256], -1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        img.putalpha(Image.fromarray(((x * 11 + y * 5) % 256).astype(np.uint8), "L"))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def psd_bytes(w: int, h: int, channels: int, rle: bool) -> bytes:
    """A minimal Photoshop file (composite image only), which Pillow cannot write: 8-bit, raw or PackBits."""
    pixels = np.asarray(test_image(w, h, "RGBA" if channels == 4 else "RGB" if channels == 3 else "L"))
    planes = [pixels[..., c] for c in range(channels)] if channels > 1 else [pixels]
    # Color mode 3 (RGB) even for one channel: stb_image reads no other mode, and fills the missing channels.
    out = b"8BPS" + struct.pack(">H6xHIIHH", 1, channels, h, w, 8, 3)
    out += struct.pack(">I", 0) + struct.pack(">I", 0) + struct.pack(">I", 0)  # color mode, resources, layers
    if not rle:
        return out + struct.pack(">H", 0) + b"".join(p.tobytes() for p in planes)
    rows = []
    for p in planes:
        for row in p:
            packed = bytearray()
            for i in range(0, w, 128):  # literal runs only: valid PackBits
                chunk = row[i:i + 128].tobytes()
                packed += bytes([len(chunk) - 1]) + chunk
            rows.append(bytes(packed))
    return out + struct.pack(">H", 1) + b"".join(struct.pack(">H", len(r)) for r in rows) + b"".join(rows)


def hdr_bytes(w: int, h: int, rle: bool) -> bytes:
    """A Radiance RGBE file, flat or with the new-style run-length scanlines (which need 8 <= width < 32768)."""
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\nEXPOSURE=1.0\n\n" + f"-Y {h} +X {w}\n".encode()
    pixels = np.asarray(test_image(w, h)).astype(np.uint16)
    body = bytearray()
    for y in range(h):
        rgbe = [(pixels[y, x, 0] | 1, pixels[y, x, 1] | 1, pixels[y, x, 2] | 1, 128) for x in range(w)]
        if not rle:
            body += b"".join(bytes(p) for p in rgbe)
            continue
        body += bytes([2, 2, w >> 8, w & 0xFF])
        for c in range(4):
            values = [p[c] for p in rgbe]
            x = 0
            while x < w:
                run = 1
                while x + run < w and run < 127 and values[x + run] == values[x]:
                    run += 1
                if run >= 3:
                    body += bytes([128 + run, values[x]])
                    x += run
                else:
                    n = min(128, w - x)
                    body += bytes([n]) + bytes(values[x:x + n])
                    x += n
    return head + bytes(body)


def image_seeds() -> dict[str, bytes]:
    files = {}
    base, odd = test_image(24, 16), test_image(13, 7)
    files["rgb.png"] = save(base, "PNG")
    files["rgba.png"] = save(test_image(12, 9, "RGBA"), "PNG")
    files["gray.png"] = save(test_image(11, 6, "L"), "PNG")
    files["gray_alpha.png"] = save(test_image(10, 5, "LA"), "PNG")
    files["palette.png"] = save(test_image(16, 8, "P"), "PNG")
    files["bilevel.png"] = save(test_image(17, 5, "1"), "PNG")
    files["gray16.png"] = save(Image.fromarray(np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000), "PNG")
    files["interlaced.png"] = save(odd, "PNG", interlace=1)
    files["baseline.jpg"] = save(base, "JPEG", quality=80)
    files["progressive.jpg"] = save(base, "JPEG", quality=60, progressive=True)
    files["gray.jpg"] = save(test_image(16, 16, "L"), "JPEG")
    files["subsample_444.jpg"] = save(odd, "JPEG", subsampling=0)
    files["subsample_422.jpg"] = save(odd, "JPEG", subsampling=1)
    files["subsample_420.jpg"] = save(test_image(33, 17), "JPEG", subsampling=2)
    files["cmyk.jpg"] = save(test_image(8, 8, "CMYK"), "JPEG")
    try:
        files["restarts.jpg"] = save(test_image(32, 16), "JPEG", restart_marker_blocks=1)
    except TypeError:  # Pillow < 10.4 has no restart markers option
        pass
    files["rgb.bmp"] = save(odd, "BMP")
    files["rgba.bmp"] = save(test_image(7, 3, "RGBA"), "BMP")
    files["palette.bmp"] = save(test_image(9, 4, "P"), "BMP")
    files["bilevel.bmp"] = save(test_image(9, 4, "1"), "BMP")
    files["gray.bmp"] = save(test_image(6, 6, "L"), "BMP")
    files["still.gif"] = save(test_image(12, 8, "P"), "GIF")
    frames = [test_image(10, 6, "P"), test_image(10, 6).rotate(180).convert("P")]
    files["animated.gif"] = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["rgb.tga"] = save(odd, "TGA")
    files["rgb_rle.tga"] = save(test_image(20, 4), "TGA", compression="tga_rle")
    files["rgba_rle.tga"] = save(test_image(8, 3, "RGBA"), "TGA", compression="tga_rle")
    files["gray.tga"] = save(test_image(5, 5, "L"), "TGA")
    files["palette.tga"] = save(test_image(6, 4, "P"), "TGA")
    files["rgb.psd"] = psd_bytes(9, 5, 3, rle=False)
    files["rgba_rle.psd"] = psd_bytes(7, 4, 4, rle=True)
    files["one_channel.psd"] = psd_bytes(6, 3, 1, rle=False)
    files["flat.hdr"] = hdr_bytes(5, 3, rle=False)
    files["rle.hdr"] = hdr_bytes(12, 3, rle=True)
    return files


def view_seeds() -> dict[str, bytes]:
    """16 parameter bytes (see fuzz_image_views.c) and then pixels."""
    def params(w, h, dw, dh, tile, rows, cols, pad=(0, 0, 0), mean=0, std=0):
        return struct.pack("<HHHH", w - 1, h - 1, dw - 1, dh - 1) + bytes([tile - 1, rows - 1, cols - 1, *pad,
                                                                             mean, std])
    pixels = np.asarray(test_image(16, 12)).tobytes()
    return {
        "square": params(16, 12, 8, 8, 8, 2, 2) + pixels,
        "upscale": params(5, 4, 37, 29, 11, 1, 3, (127, 127, 127)) + pixels[:60],
        "tall": params(1, 4000, 3, 900, 16, 3, 1, (255, 0, 0), 0x15, 0x15) + pixels,
        "wide": params(6000, 2, 1000, 1, 7, 1, 4) + pixels,
        "one_pixel": params(1, 1, 1, 1, 1, 1, 1) + b"\x80\x40\x20",
        "constant": params(33, 17, 64, 3, 40, 5, 5) + b"\x9c",
        "clip_pattern": params(8, 8, 23, 23, 9, 2, 3, (1, 2, 3), 0x3F, 0x2A) + bytes([0, 255] * 96),
    }


def main() -> int:
    if os.path.exists(SEEDS):
        shutil.rmtree(SEEDS)
    write_set("fuzz_json", json_seeds(), mutate=2)
    write_set("fuzz_safetensors", safetensors_seeds(), mutate=2)
    write_set("fuzz_safetensors_index", index_seeds(), mutate=2)
    write_set("fuzz_image", image_seeds(), mutate=3)
    write_set("fuzz_image_views", view_seeds(), mutate=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(SEEDS) for f in fs)
    count = sum(len(fs) for _, _, fs in os.walk(SEEDS))
    print(f"wrote {count} seed files, {total / 1024:.0f} KiB, under {os.path.relpath(SEEDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
