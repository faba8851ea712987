"""Writing checkpoints in shards (write_checkpoint, used by `eyecare convert` and make-tiny): the index and the
shards as Hugging Face's safetensors library reads them, and the model loaded from them answers as from one file."""
import json

import numpy as np
from safetensors.torch import load_file

from eyecare.checkpoint import read_config, write_checkpoint
from eyecare.core import from_bfloat16
from eyecare.model import EyecareGPT
from eyecare.safetensors import open_safetensors
from eyecare.tiny import make_tiny
from reference import IMAGES


def test_sharded_checkpoint_round_trips_and_answers_alike(tmp_path):
    single = make_tiny(tmp_path / "single", "phi3")
    config = read_config(single)
    with open_safetensors(single) as ckpt:
        tensors = {n: ((np.array(ckpt.get(n)), "BF16") if ckpt.info(n)[0] == "BF16" else np.array(ckpt.get(n)))
                   for n in ckpt.names()}
    sizes = {n: (v[0] if isinstance(v, tuple) else v).nbytes for n, v in tensors.items()}
    shard_bytes = 40_000
    assert max(sizes.values()) > shard_bytes  # one tensor alone is bigger than a shard: it gets a shard of its own
    out = tmp_path / "sharded"
    written = write_checkpoint(out, config, tensors, shard_bytes=shard_bytes)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 2 and shards == sorted(p.name for p in written if p.name.startswith("model-0"))
    assert all(f == f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k, f in enumerate(shards, 1))
    assert sorted(index["weight_map"]) == sorted(tensors) and index["metadata"]["total_size"] == sum(sizes.values())
    assert not (out / "model.safetensors").exists()
    seen = {}
    for f in shards:
        loaded = load_file(str(out / f))  # Hugging Face's reader
        members = [n for n, g in index["weight_map"].items() if g == f]
        assert sorted(loaded) == sorted(members)
        assert sum(sizes[n] for n in members) <= shard_bytes or len(members) == 1
        seen.update(loaded)
    for name, value in tensors.items():
        want = from_bfloat16(value[0]) if isinstance(value, tuple) else value
        assert np.array_equal(seen[name].float().numpy(), want), name
        assert str(seen[name].dtype) == ("torch.bfloat16" if isinstance(value, tuple) else f"torch.{value.dtype}")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (out / f).write_bytes((single / f).read_bytes())
    answers = []
    for path in (single, out):
        with EyecareGPT.from_pretrained(path, progress=False, max_views=4) as model:
            answers.append(model.chat("Describe.", images=IMAGES[:1], max_new_tokens=8))
    assert answers[0] == answers[1]
