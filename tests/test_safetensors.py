"""The safetensors reader (csrc/io/safetensors.c, csrc/io/json.c, csrc/python/py_safetensors.c).

Files written by the safetensors library must read back bit-exactly; hostile files must raise
eyecare.FormatError naming the file and the problem, and nothing may crash the process."""
import gc
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file as torch_save

import eyecare._core as core
from eyecare.safetensors import SafetensorsFile, open_safetensors

FormatError = core.FormatError


# ------------------------------------------------------------------------------------------------
# Helpers


def raw_file(path, header, data=b"", header_len=None):
    """Writes a safetensors file by hand: header (a dict, str or bytes), padded to 8 bytes with spaces
    as the reference writer does, then data. header_len overrides the 8-byte length."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    header += b" " * (-len(header) % 8)
    n = len(header) if header_len is None else header_len
    path = pathlib.Path(path)
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def expect_format_error(path, *fragments, opener=open_safetensors):
    """Opening path raises FormatError whose message names the file and contains every fragment."""
    with pytest.raises(FormatError) as info:
        opener(path)
    message = str(info.value)
    assert os.path.basename(str(path).rstrip("/")) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def good_header_file(tmp_path, name="good.safetensors"):
    """A small valid file: two F32 tensors and an I64 one, laid out back to back."""
    a = np.arange(6, dtype=np.float32)
    b = np.arange(4, dtype=np.int64)
    header = {"a": entry("F32", [2, 3], 0, 24), "b": entry("I64", [4], 24, 56), "__metadata__": {"format": "pt"}}
    return raw_file(tmp_path / name, header, a.tobytes() + b.tobytes())


# ------------------------------------------------------------------------------------------------
# Files from the safetensors library read back bit-exactly

ST_NAMES = {np.bool_: "BOOL", np.uint8: "U8", np.int8: "I8", np.int16: "I16", np.uint16: "U16", np.float16: "F16",
            np.int32: "I32", np.uint32: "U32", np.float32: "F32", np.int64: "I64", np.uint64: "U64",
            np.float64: "F64", np.complex64: "C64"}
NUMPY_DTYPES = list(ST_NAMES)
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 5), (1, 1, 1, 1, 2)]


def random_array(rng, dtype, shape):
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype == np.complex64:
        return np.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), dtype=np.complex64)
    # Random bit patterns, so NaN payloads, infinities and subnormals are covered too.
    bits = {np.float16: np.uint16, np.float32: np.uint32, np.float64: np.uint64}[dtype]
    return random_array(rng, bits, shape).view(dtype)


def test_numpy_writer_every_dtype_and_shape(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"{np.dtype(dt).name}_{i}": random_array(rng, dt, shape)
               for dt in NUMPY_DTYPES for i, shape in enumerate(SHAPES)}
    np_save(tensors, str(tmp_path / "all.safetensors"), metadata={"format": "np", "note": "ünïcode ✓"})
    with open_safetensors(tmp_path / "all.safetensors") as f:
        assert f.names() == sorted(tensors)
        assert len(f) == len(tensors)
        assert f.metadata() == {"format": "np", "note": "ünïcode ✓"}
        for name, want in tensors.items():
            got = f.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
            assert not got.flags.writeable
            assert f.info(name) == (ST_NAMES[want.dtype.type], want.shape)


def test_torch_writer_bf16_f16_f32_i32_i64(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(4, 4, generator=g).to(torch.float16),
        "f32": torch.randn(2, 3, 4, generator=g),
        "i32": torch.randint(-2**31, 2**31 - 1, (9,), generator=g, dtype=torch.int32),
        "i64": torch.randint(-2**62, 2**62, (5,), generator=g, dtype=torch.int64),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 8, dtype=torch.bfloat16),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
    }
    path = tmp_path / "torch.safetensors"
    torch_save(tensors, str(path), metadata={"format": "pt"})
    f = open_safetensors(str(path))
    for name, t in tensors.items():
        got = f.get(name)
        assert got.shape == tuple(t.shape), name
        if t.dtype == torch.bfloat16:
            assert got.dtype == np.uint16
            assert np.array_equal(got, t.view(torch.int16).numpy().view(np.uint16))
        else:
            assert got.tobytes() == t.numpy().tobytes(), name
    assert f.info("bf16") == ("BF16", (3, 5))
    assert f.info("scalar") == ("F32", ())
    assert f.metadata() == {"format": "pt"}


def test_unsupported_dtype_is_reported_only_when_used(tmp_path):
    path = tmp_path / "fp8.safetensors"
    torch_save({"w8": torch.zeros(4, dtype=torch.float8_e4m3fn), "ok": torch.ones(2)}, str(path))
    f = open_safetensors(path)
    assert f.info("w8") == ("F8_E4M3", (4,))
    assert np.array_equal(f.get("ok"), np.ones(2, np.float32))
    with pytest.raises(FormatError, match=r"fp8\.safetensors: tensor 'w8' has dtype F8_E4M3, which get\(\) does not"):
        f.get("w8")


def test_a_thousand_tensors_and_lookup(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"model.layers.{i % 40}.block_{i}.weight" for i in range(1000)]
    tensors = {n: rng.standard_normal(int(rng.integers(0, 20))).astype(np.float32) for n in names}
    np_save(tensors, str(tmp_path / "many.safetensors"))
    f = open_safetensors(tmp_path / "many.safetensors")
    assert f.names() == sorted(names)
    for n in names:
        assert n in f and n + "x" not in f and n[:-1] not in f
    for n in names:
        assert np.array_equal(f.get(n), tensors[n])
    assert list(f) == sorted(names)


def test_views_outlive_close_and_the_file_object(tmp_path):
    path = tmp_path / "v.safetensors"
    np_save({"x": np.arange(1000, dtype=np.float32)}, str(path))
    f = open_safetensors(path)
    x = f.get("x")
    with pytest.raises(ValueError):
        x[0] = 1  # read-only view of a read-only mapping
    f.close()
    assert f.closed
    for call in (f.names, f.metadata, lambda: f.get("x"), lambda: f.info("x"), lambda: len(f)):
        with pytest.raises(ValueError, match="closed"):
            call()
    del f
    gc.collect()
    assert x.sum() == sum(range(1000))  # the mapping lives while the view does


def test_lookup_errors_and_path_types(tmp_path):
    path = good_header_file(tmp_path)
    for p in (path, str(path), os.fsencode(path)):
        assert open_safetensors(p).names() == ["a", "b"]
    f = SafetensorsFile(path)
    with pytest.raises(KeyError, match="no tensor 'c'"):
        f.get("c")
    with pytest.raises(KeyError):
        f.info("a\0b")
    with pytest.raises(TypeError):
        f.get(3)
    assert "c" not in f and 3 not in f
    assert f.path == str(path)
    assert "2 tensors" in repr(f)
    assert np.array_equal(f.get("a"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_unaligned_data_is_copied_into_an_aligned_array(tmp_path):
    # A writer that does not align: one byte of U8 first pushes the F32 tensor to an odd address.
    values = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    header = {"u": entry("U8", [1], 0, 1), "f": entry("F32", [3], 1, 13)}
    f = open_safetensors(raw_file(tmp_path / "odd.safetensors", header, b"\x07" + values.tobytes()))
    got = f.get("f")
    assert got.flags.aligned and not got.flags.writeable
    assert np.array_equal(got, values)
    assert f.get("u")[0] == 7


def test_holes_and_trailing_bytes_are_allowed(tmp_path):
    # Offsets need not cover the data section (alignment padding from other writers).
    header = {"a": entry("I32", [1], 8, 12)}
    f = open_safetensors(raw_file(tmp_path / "holes.safetensors", header, bytes(8) + struct.pack("<i", -5) + bytes(20)))
    assert f.get("a")[0] == -5


def test_null_metadata_and_empty_header(tmp_path):
    assert open_safetensors(raw_file(tmp_path / "null.safetensors", {"__metadata__": None})).metadata() == {}
    f = open_safetensors(raw_file(tmp_path / "empty.safetensors", "{}"))
    assert f.names() == [] and len(f) == 0


# ------------------------------------------------------------------------------------------------
# Sharded checkpoints


def write_sharded(directory, shards, metadata=None, weight_map=None):
    """shards: {file name: {tensor name: array}}; writes them and model.safetensors.index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    wm = {}
    for file, tensors in shards.items():
        np_save(tensors, str(directory / file), metadata=metadata)
        wm.update({name: file for name in tensors})
    if weight_map is not None:
        wm = weight_map
    index = {"metadata": {"total_size": 123}, "weight_map": wm}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def test_sharded_checkpoint_reads_as_one_collection(tmp_path):
    rng = np.random.default_rng(2)
    shards = {
        f"model-0000{i + 1}-of-00003.safetensors": {
            f"layers.{i}.{k}": rng.standard_normal((i + 1, 3)).astype(np.float32) for k in ("q", "k", "v")
        }
        for i in range(3)
    }
    shards["model-00003-of-00003.safetensors"]["lm_head"] = np.arange(4, dtype=np.int64)
    d = write_sharded(tmp_path / "ckpt", shards, metadata={"format": "pt"})
    every = {n: a for tensors in shards.values() for n, a in tensors.items()}
    for path in (d, str(d) + "/", d / "model.safetensors.index.json"):
        f = open_safetensors(path)
        assert f.names() == sorted(every)
        assert f.metadata() == {"format": "pt"}
        for n, a in every.items():
            assert f.get(n).tobytes() == a.tobytes()


def test_sharded_metadata_first_shard_wins(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    np_save({"a": np.zeros(1, np.float32)}, str(d / "s1.safetensors"), metadata={"k": "one", "only1": "x"})
    np_save({"b": np.zeros(1, np.float32)}, str(d / "s2.safetensors"), metadata={"k": "two", "only2": "y"})
    index = {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert open_safetensors(d).metadata() == {"k": "one", "only1": "x", "only2": "y"}


def test_directory_resolution(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    np_save({"w": np.ones(2, np.float32)}, str(single / "pytorch_weights.safetensors"))
    assert open_safetensors(single).names() == ["w"]  # the only .safetensors file
    np_save({"m": np.ones(2, np.float32)}, str(single / "model.safetensors"))
    assert open_safetensors(single).names() == ["m"]  # model.safetensors is preferred

    two = tmp_path / "two"
    two.mkdir()
    for n in ("a", "b"):
        np_save({n: np.ones(1, np.float32)}, str(two / f"{n}.safetensors"))
    expect_format_error(two, "2 .safetensors files")

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "config.json").write_text("{}")
    expect_format_error(nothing, "no safetensors checkpoint")

    with pytest.raises(OSError):
        open_safetensors(tmp_path / "does-not-exist.safetensors")


@pytest.mark.parametrize("bad_name", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ".", "",
                                      "a\\b.safetensors"])
def test_weight_map_outside_the_directory_is_refused(tmp_path, bad_name):
    outside = tmp_path / "outside.safetensors"
    np_save({"x": np.ones(1, np.float32)}, str(outside))
    d = write_sharded(tmp_path / "ckpt", {"ok.safetensors": {"y": np.ones(1, np.float32)}},
                      weight_map={"y": "ok.safetensors", "x": bad_name})
    expect_format_error(d / "model.safetensors.index.json", "not a plain file name")


def test_sharded_checkpoint_faults(tmp_path):
    one = np.ones(2, np.float32)
    d = write_sharded(tmp_path / "missing", {"a.safetensors": {"a": one}}, weight_map={"a": "a.safetensors",
                                                                                        "b": "b.safetensors"})
    expect_format_error(d, "b.safetensors", "does not exist")

    d = write_sharded(tmp_path / "wrong", {"a.safetensors": {"a": one}, "b.safetensors": {"b": one}},
                      weight_map={"a": "b.safetensors", "b": "b.safetensors"})
    expect_format_error(d, "'a' in b.safetensors, but that file does not contain it")

    d = write_sharded(tmp_path / "twice", {"a.safetensors": {"x": one}, "b.safetensors": {"x": one, "y": one}},
                      weight_map={"x": "a.safetensors", "y": "b.safetensors"})
    expect_format_error(d, "tensor 'x' is in two shards")

    d = tmp_path / "noindex"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text('{"metadata": {}}')
    expect_format_error(d / "model.safetensors.index.json", "weight_map")

    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": 3}}')
    expect_format_error(d / "model.safetensors.index.json", "not a file name")

    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "x.safetensors",')
    expect_format_error(d / "model.safetensors.index.json", "not valid JSON")

    bad_shard = write_sharded(tmp_path / "badshard", {"a.safetensors": {"a": one}})
    (bad_shard / "a.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    expect_format_error(bad_shard, "a.safetensors", "not an object")


# ------------------------------------------------------------------------------------------------
# Hostile single files


def test_zero_byte_and_short_files(tmp_path):
    for n in range(8):
        p = tmp_path / f"short{n}.safetensors"
        p.write_bytes(b"\x10" * n)
        expect_format_error(p, f"the file is {n} bytes")


def test_truncated_everywhere(tmp_path):
    path = tmp_path / "full.safetensors"
    np_save({"a": np.arange(10, dtype=np.float32), "b": np.arange(3, dtype=np.int16)}, str(path))
    data = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    cuts = sorted(set(range(0, header_end + 8)) | set(range(header_end, len(data), 3)))
    for cut in cuts:
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        message = expect_format_error(p)
        if cut < 8:
            assert "too short" in message
        elif cut < header_end:
            assert "runs past the end of the file" in message
        else:
            assert "run past the end of the file" in message
    assert open_safetensors(path).names() == ["a", "b"]


def test_header_length_limits(tmp_path):
    expect_format_error(raw_file(tmp_path / "long.safetensors", "{}", header_len=1000), "header length 1000 runs past")
    for n in (100_000_001, 2**40, 2**64 - 1):
        expect_format_error(raw_file(tmp_path / f"huge{n}.safetensors", "{}", header_len=n), "over the limit")


@pytest.mark.parametrize("header,fragment", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "the header is a JSON array, not an object"),
    (b'"x"', "JSON string, not an object"),
    (b"", "not valid JSON"),
    (b'{"a": ', "not valid JSON"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},}', "not valid JSON"),
    (b'{"\xff": 1}', "invalid UTF-8"),
    (b'{"a": NaN}', "not valid JSON"),
    (b'\x00' * 16, "not valid JSON"),
    (b'{"a": 1}', "tensor 'a' is described by a JSON integer, not an object"),
])
def test_malformed_headers(tmp_path, header, fragment):
    expect_format_error(raw_file(tmp_path / "bad.safetensors", header, bytes(4)), fragment)


@pytest.mark.parametrize("tensor,fragment", [
    (entry("F33", [1], 0, 4), "unknown dtype 'F33'"),
    (entry(5, [1], 0, 4), "\"dtype\", not a string"),
    ({"shape": [1], "data_offsets": [0, 4]}, "no \"dtype\""),
    (entry("F32", [-1], 0, 4), "shape entry 0 that is not a non-negative integer"),
    (entry("F32", [1.0], 0, 4), "shape entry 0"),
    (entry("F32", "1", 0, 4), "not an array"),
    (entry("F32", [2**31, 2**31, 2**31], 0, 4), "overflows"),
    (entry("F32", [2**62, 4], 0, 4), "overflows"),
    (entry("F32", [1], 0, 99999), "data_offsets [0, 99999] run past the end of the file (data section is 16 bytes)"),
    (entry("F32", [1], 8, 4), "begin after they end"),
    (entry("F32", [2], 0, 4), "spanning 4 bytes, but 2 elements of F32 take 8 bytes"),
    (entry("F32", [1], -4, 0), "non-negative"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "[begin, end]"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 2**64]}, "[begin, end]"),
    ({"dtype": "F32", "shape": [1]}, "no \"data_offsets\""),
    (entry("F4", [3], 0, 2), "3 elements of the 4-bit F4, which do not fill a whole number of bytes"),
])
def test_bad_tensor_entries(tmp_path, tensor, fragment):
    expect_format_error(raw_file(tmp_path / "bad.safetensors", {"x": tensor}, bytes(16)), "tensor 'x'", fragment)


def test_json_strings_escapes_and_numbers(tmp_path):
    names = ["é😀 \n\t\"\\/", "plain", "\u2028"]
    header = {n: entry("U8", [1], i, i + 1) for i, n in enumerate(names)}
    for ascii_only in (True, False):  # \uXXXX escapes with surrogate pairs, and raw UTF-8
        text = json.dumps(header, ensure_ascii=ascii_only)
        f = open_safetensors(raw_file(tmp_path / f"names{ascii_only}.safetensors", text, bytes([5, 6, 7])))
        assert f.names() == sorted(names, key=lambda n: n.encode())
        assert [f.get(n)[0] for n in names] == [5, 6, 7]
    offsets = '{"x": {"dtype": "U8", "shape": [1], "data_offsets": %s}}'
    assert open_safetensors(raw_file(tmp_path / "zero.safetensors", offsets % "[-0, 1]", bytes(1))).get("x").size == 1
    for i, (header, fragment) in enumerate([
        (offsets % "[0, 1e0]", "[begin, end]"),
        (offsets % "[0, 1.0]", "[begin, end]"),
        (offsets % "[0, 01]", "leading zero"),
        (offsets % "[0, +1]", "unexpected character '+'"),
        ('{"\\ud800": 1}', "high surrogate without a low one"),
        ('{"\\udc00\\ud800": 1}', "low surrogate without a high one"),
        ('{"\\u12g4": 1}', "four hex digits"),
        ('{"\\q": 1}', "invalid escape"),
        (b'{"\xc0\xaf": 1}', "invalid UTF-8"),
        (b'{"\xed\xa0\x80": 1}', "invalid UTF-8"),
        (b'{"\xf4\x90\x80\x80": 1}', "invalid UTF-8"),
        (b'{"a\x01": 1}', "control character"),
        ('{} // comment', "unexpected character '/'"),
        ('{}x', "unexpected character 'x' where the end of the input"),
        ("{'a': 1}", "unexpected character"),
    ]):
        expect_format_error(raw_file(tmp_path / f"json{i}.safetensors", header, bytes(1)), fragment)


def test_overlapping_tensors(tmp_path):
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16), "e": entry("F32", [0], 4, 4)}
    expect_format_error(raw_file(tmp_path / "overlap.safetensors", header, bytes(16)), "'a'", "'b'", "overlap")
    # The same bytes for two names (aliasing) is an overlap too.
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 0, 16)}
    expect_format_error(raw_file(tmp_path / "alias.safetensors", header, bytes(16)), "overlap")
    # An empty tensor inside another's range occupies no bytes.
    header = {"a": entry("F32", [4], 0, 16), "e": entry("F32", [0], 4, 4)}
    assert open_safetensors(raw_file(tmp_path / "ok.safetensors", header, bytes(16))).get("e").shape == (0,)


def test_duplicate_keys(tmp_path):
    header = '{"a": %s, "a": %s}' % (json.dumps(entry("F32", [1], 0, 4)), json.dumps(entry("F32", [1], 4, 8)))
    expect_format_error(raw_file(tmp_path / "dup.safetensors", header, bytes(8)), 'duplicate key "a"')
    header = '{"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}'
    expect_format_error(raw_file(tmp_path / "dupfield.safetensors", header, bytes(8)), 'duplicate key "dtype"')


def test_deep_nesting(tmp_path):
    header = '{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}"
    expect_format_error(raw_file(tmp_path / "deep.safetensors", header), "nest deeper than 64 levels")
    header = '{"x": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    expect_format_error(raw_file(tmp_path / "deep2.safetensors", header), "nest deeper")


def test_metadata_and_name_faults(tmp_path):
    expect_format_error(raw_file(tmp_path / "m1.safetensors", {"__metadata__": {"k": 1}}), "'k' is a JSON integer")
    expect_format_error(raw_file(tmp_path / "m2.safetensors", {"__metadata__": [1]}), "not an object of strings")
    expect_format_error(raw_file(tmp_path / "m3.safetensors", '{"__metadata__": {"k": "a\\u0000b"}}'), "NUL")
    header = '{"a\\u0000b": %s}' % json.dumps(entry("F32", [1], 0, 4))
    expect_format_error(raw_file(tmp_path / "nul.safetensors", header, bytes(4)), "contains a NUL character")


def test_hostile_names_are_quoted_safely_in_messages(tmp_path):
    name = "\x1b[31m" + "é" * 400
    message = expect_format_error(raw_file(tmp_path / "name.safetensors", {name: entry("F99", [1], 0, 4)}, bytes(4)))
    assert "\x1b" not in message and "\\x1b" in message and "..." in message


def test_special_files(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):  # and no hang waiting for a writer
        open_safetensors(fifo)


def test_large_header_within_limits_parses(tmp_path):
    # 150 000 entries (11 MB of header), each one found (its parse time is a benchmark matter, not a test's).
    n = 150_000
    parts = [f'"t{i}": {{"dtype": "U8", "shape": [1], "data_offsets": [{i}, {i + 1}]}}' for i in range(n)]
    path = raw_file(tmp_path / "big.safetensors", "{" + ",".join(parts) + "}", bytes(n))
    f = open_safetensors(path)
    assert len(f) == n
    assert f.get("t12345")[0] == 0


def test_too_many_json_values(tmp_path):
    # 2.5 million tiny values in 5 MB: refused before the tree could take much memory.
    header = '{"__metadata__": [' + "0," * 2_500_000 + "0]}"
    expect_format_error(raw_file(tmp_path / "values.safetensors", header), "more than 2097152 JSON values")


# ------------------------------------------------------------------------------------------------
# Fuzzing: mutated and random files in a subprocess, which must exit normally


FUZZ_SCRIPT = textwrap.dedent("""
    import json, os, random, struct, sys
    import numpy as np
    from safetensors.numpy import save_file
    import eyecare._core as core
    from eyecare.safetensors import open_safetensors

    workdir, iterations = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1234)
    seed_path = os.path.join(workdir, "seed.safetensors")
    save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(3, dtype=np.int64),
               "c": np.zeros((0, 2), np.float16), "d": np.array(7, np.uint8)}, seed_path, metadata={"k": "v"})
    seed = open(seed_path, "rb").read()
    tokens = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"-", b"0", b"9", b"1e308", b"\\\\u", b"\\\\ud800",
              b"18446744073709551615", b"-1", b"F32", b"BF16", b"shape", b"data_offsets", b"__metadata__",
              b"\\xff", b"\\xc0\\x80", b"\\x00", b"null", b"true"]

    def mutate(data):
        data = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(7)
            pos = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[pos] = rng.randrange(256)
            elif op == 1 and data:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 2:
                del data[pos:]
            elif op == 3:
                data[pos:pos] = rng.choice(tokens)
            elif op == 4 and data:
                del data[pos:pos + rng.randint(1, 16)]
            elif op == 5:
                lengths = [0, 1, len(data), max(0, len(data) - 8), 2**63, rng.randrange(2**16)]
                data[0:8] = struct.pack("<Q", rng.choice(lengths))
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        return bytes(data)

    # Mutations that keep the JSON valid, to reach the checks behind the parser.
    header_len = struct.unpack("<Q", seed[:8])[0]
    header, payload = json.loads(seed[8:8 + header_len]), seed[8 + header_len:]
    numbers = [0, 1, 2, 3, 4, 7, 8, 12, 16, 47, 48, 64, -1, 2**31, 2**32 + 4, 2**63 - 1, 2**64]
    dtype_names = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F4", "F6_E2M3", "F8_E4M3", "C64", "X"]

    def semantic():
        h = json.loads(json.dumps(header))
        for _ in range(rng.randint(1, 3)):
            name = rng.choice([k for k in h if k != "__metadata__"])
            t = h[name]
            field = rng.choice(["dtype", "shape", "data_offsets", "name"])
            if field == "dtype":
                t["dtype"] = rng.choice(dtype_names)
            elif field == "shape":
                t["shape"] = [rng.choice(numbers) for _ in range(rng.randrange(4))]
            elif field == "data_offsets":
                t["data_offsets"][rng.randrange(2)] = rng.choice(numbers)
            else:
                h[name + rng.choice(["", "x", "\\u00e9", "\\x00"])] = h.pop(name)
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + payload[:len(payload) - rng.choice([0, 0, 1, 8])]

    def garbage():
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        if rng.random() < 0.5:
            return body
        return struct.pack("<Q", len(body)) + body

    # A fresh file each time, unlinked after use: on ext4, truncating or replacing a file that was just
    # written forces it to disk (auto_da_alloc), which is a hundred times slower.
    def write(name, data):
        path = os.path.join(workdir, name)
        with open(path, "xb") as out:
            out.write(data)
        return path

    opened = 0
    for i in range(iterations):
        data = garbage() if i % 5 == 0 else semantic() if i % 5 < 3 else mutate(seed)
        path = write(f"fuzz{i}.safetensors", data)
        try:
            with open_safetensors(path) as f:
                opened += 1
                f.metadata()
                for name in f.names():
                    f.info(name)
                    try:
                        a = f.get(name)
                    except core.FormatError:
                        continue
                    a.tobytes()
        except (core.FormatError, OSError) as e:
            assert str(e)
        os.unlink(path)
    # The index reader: mutated index files (opened by path) next to two valid shards.
    workdir = os.path.join(workdir, "sharded")
    os.mkdir(workdir)
    save_file({"x": np.ones(3, np.float32)}, os.path.join(workdir, "s1.safetensors"))
    save_file({"y": np.ones(2, np.float32)}, os.path.join(workdir, "s2.safetensors"))
    index = json.dumps({"metadata": {"total_size": 20},
                        "weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}}).encode()
    for i in range(iterations // 4):
        path = write(f"{i}.index.json", mutate(index))
        try:
            open_safetensors(path).names()
        except (core.FormatError, OSError) as e:
            assert str(e)
        os.unlink(path)
    print("opened", opened)
""")


def test_fuzzing_never_crashes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, str(tmp_path), "3000"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert "opened" in result.stdout


# ------------------------------------------------------------------------------------------------
# Device upload (lavapipe in CI, with the validation layer from conftest.py)


def test_to_device(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(2, 5, generator=g).to(torch.float16),
        "bf16": torch.randn(4, 2, 3, generator=g).to(torch.bfloat16),
        "i32": torch.randint(-1000, 1000, (6,), generator=g, dtype=torch.int32),
        "i64": torch.tensor([0, -1, 2**31 - 1, -2**31], dtype=torch.int64),
        "u8": torch.arange(10, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "i64_big": torch.tensor([1, 2**31], dtype=torch.int64),
        "f64": torch.ones(2, dtype=torch.float64),
        "five_d": torch.ones(1, 1, 1, 1, 2),
    }
    path = tmp_path / "dev.safetensors"
    torch_save(tensors, str(path))
    f = open_safetensors(path)
    expected_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i32": "int32", "i64": "int32",
                      "u8": "int32", "scalar": "float32", "empty": "float32"}
    for name, want_dtype in expected_dtype.items():
        t = f.to_device(name)
        assert t.dtype == want_dtype, name
        want = tensors[name]
        assert t.shape == (tuple(want.shape) or (1,)), name
        got = t.numpy()
        if want.dtype == torch.bfloat16:
            assert np.array_equal(got, want.view(torch.int16).numpy().view(np.uint16))
        elif want_dtype == "int32":
            assert np.array_equal(got, want.numpy().astype(np.int64)), name
        else:
            assert got.tobytes() == want.numpy().tobytes(), name
        t.free()
    with pytest.raises(ValueError, match="int32 range"):
        f.to_device("i64_big")
    with pytest.raises(FormatError, match="dtype F64, which to_device"):
        f.to_device("f64")
    with pytest.raises(ValueError, match="at most 4"):
        f.to_device("five_d")
    with pytest.raises(KeyError):
        f.to_device("nope")


def test_save_safetensors_round_trips_through_the_reference_reader(tmp_path):
    import torch
    from safetensors.torch import load_file

    from eyecare.core import to_bfloat16
    from eyecare.safetensors import save_safetensors

    values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "out.safetensors"
    save_safetensors({"f32": values, "bf16": (to_bfloat16(values), "BF16"), "i64": np.arange(5),
                      "empty": np.zeros((0, 2), np.float16)}, path, {"format": "pt"})
    ref = load_file(str(path))
    assert torch.equal(ref["f32"], torch.from_numpy(values))
    assert torch.equal(ref["bf16"], torch.from_numpy(values).to(torch.bfloat16))
    assert ref["i64"].tolist() == list(range(5)) and ref["empty"].shape == (0, 2)
    assert not list(tmp_path.glob("*.tmp-*"))
