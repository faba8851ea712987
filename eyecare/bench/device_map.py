"""Which Vulkan device a Ray worker runs on.

Ray hands an actor GPUs by the ids CUDA or ROCm use (`ray.get_gpu_ids()`, also put in
CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES). Vulkan ignores those variables and numbers devices its
own way, so every worker would otherwise pick the same GPU. The id is turned into the GPU's identity
(its UUID and PCI address) through what the driver publishes, and that identity is looked up among
the Vulkan devices (`eyecare.devices()`: VkPhysicalDeviceIDProperties::deviceUUID, and the
VK_EXT_pci_bus_info address):

- NVIDIA: /proc/driver/nvidia/gpus/<pci address>/information (or `nvidia-smi`), listed in PCI order,
  which is nvidia-smi's numbering and CUDA's with CUDA_DEVICE_ORDER=PCI_BUS_ID. NVIDIA's Vulkan
  deviceUUID is the same UUID as CUDA's, so the match is by UUID, else by PCI address. Ids that are
  UUIDs themselves (CUDA_VISIBLE_DEVICES=GPU-...) are matched directly.
- AMD: ROCm numbers the GPU nodes of the KFD topology (/sys/class/kfd/kfd/topology/nodes) in order;
  each node gives its PCI address, matched against VK_EXT_pci_bus_info.
- No GPU assigned (`--gpus-per-worker 0`): the CPU device, lavapipe.

Anything that leaves doubt is refused with DeviceMapError rather than guessed: an id with no GPU
behind it, a GPU Vulkan does not list, one GPU listed twice (two drivers for the same card), several
GPUs for one worker (a model runs on one device), and CUDA's default fastest-first numbering on a
node whose GPUs are not all the same model.

The functions take their inputs as arguments (file roots, command runner, environment), so the
tests can describe any machine.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .errors import BenchError

NVIDIA_PROC = "/proc/driver/nvidia/gpus"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"


class DeviceMapError(BenchError):
    """A worker's GPU cannot be matched to exactly one Vulkan device."""


@dataclass(frozen=True)
class Gpu:
    index: int                  # the number CUDA (PCI order) or ROCm gives it on this node
    uuid: Optional[str]         # normalized (see normalize_uuid), None when unknown
    pci_bus_id: Optional[str]   # normalized (see normalize_pci), None when unknown
    name: str = ""


def normalize_uuid(text: Optional[str]) -> Optional[str]:
    """'GPU-6C0F...' (nvidia-smi, CUDA) or '6c0f...-...' (Vulkan) -> the 32 lower-case hex digits."""
    if not text:
        return None
    digits = re.sub(r"^(GPU|MIG)-", "", text.strip(), flags=re.IGNORECASE).replace("-", "").lower()
    return digits if re.fullmatch(r"[0-9a-f]{32}", digits) else None


def normalize_pci(text: Optional[str]) -> Optional[str]:
    """'00000000:18:00.0' (nvidia-smi), '0000:18:00.0' (lspci -D) or '18:00.0' -> '0000:18:00.0'."""
    if not text:
        return None
    m = re.fullmatch(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])", text.strip())
    if not m:
        return None
    domain, bus, device, function = (int(g, 16) if g else 0 for g in m.groups())
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function:x}"


def nvidia_gpus(proc_root: str = NVIDIA_PROC, run: Optional[Callable[[Sequence[str]], str]] = None) -> list:
    """The NVIDIA GPUs of this node in PCI order (nvidia-smi's numbering), from the driver's /proc files,
    else from nvidia-smi; [] when neither exists."""
    gpus = []
    root = Path(proc_root)
    if root.is_dir():
        for info in root.glob("*/information"):
            fields = {}
            for line in info.read_text(errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip().lower()] = value.strip()
            bus = normalize_pci(fields.get("bus location") or info.parent.name)
            gpus.append((bus or "", normalize_uuid(fields.get("gpu uuid")), fields.get("model", "")))
        gpus.sort()
        return [Gpu(i, uuid, bus or None, name) for i, (bus, uuid, name) in enumerate(gpus)]
    if run is None:
        if shutil.which("nvidia-smi") is None:
            return []
        run = _run_command
    try:
        text = run(["nvidia-smi", "--query-gpu=index,pci.bus_id,uuid,name", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeviceMapError(f"nvidia-smi failed: {exc}") from None
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 3)]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append(Gpu(int(parts[0]), normalize_uuid(parts[2]), normalize_pci(parts[1]), parts[3]))
    return sorted(gpus, key=lambda g: g.index)


def amd_gpus(nodes_root: str = KFD_NODES) -> list:
    """The AMD GPUs of this node in ROCm's numbering: the KFD topology nodes that are GPUs, in node order.
    `location_id` is the PCI bus/device/function as (bus << 8) | (device << 3) | function."""
    root = Path(nodes_root)
    if not root.is_dir():
        return []
    found = []
    for node in root.iterdir():
        if not node.name.isdigit() or not (node / "properties").is_file():
            continue
        props = {}
        for line in (node / "properties").read_text(errors="replace").splitlines():
            key, _, value = line.strip().partition(" ")
            if value.strip().lstrip("-").isdigit():
                props[key] = int(value)
        gpu_id = (node / "gpu_id").read_text().strip() if (node / "gpu_id").is_file() else "0"
        if gpu_id in ("", "0") or "location_id" not in props:   # CPU nodes have gpu_id 0
            continue
        loc = props["location_id"]
        bus = f"{props.get('domain', 0):04x}:{loc >> 8:02x}:{(loc >> 3) & 0x1f:02x}.{loc & 7:x}"
        found.append((int(node.name), bus))
    found.sort()
    return [Gpu(i, None, bus, "AMD GPU") for i, (_, bus) in enumerate(found)]


def _run_command(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=True).stdout


def _describe(device: Mapping) -> str:
    return (f"Vulkan device {device['index']} {device['name']!r} (uuid {device.get('uuid')}, "
            f"pci {device.get('pci_bus_id') or 'not reported'})")


def _one(matches: list, what: str, vulkan: Sequence[Mapping]) -> int:
    if len(matches) == 1:
        return matches[0]["index"]
    listing = "; ".join(_describe(d) for d in (matches or vulkan)) or "none"
    if matches:
        raise DeviceMapError(f"{what} matches {len(matches)} Vulkan devices, so which one to use is ambiguous "
                             f"(the same card through two drivers?): {listing}. Remove one driver's ICD file or "
                             "point VK_DRIVER_FILES at one")
    raise DeviceMapError(f"{what} is not among the Vulkan devices ({listing}); is its vendor's Vulkan driver "
                         "installed on this node?")


def map_device(gpu_ids: Sequence, vulkan: Sequence[Mapping], *, env: Optional[Mapping] = None,
               nvidia: Optional[Sequence[Gpu]] = None, amd: Optional[Sequence[Gpu]] = None) -> int:
    """The index (into `vulkan`, i.e. eyecare.devices(); EYECARE_DEVICE takes it) of the Vulkan device for a
    worker that Ray gave `gpu_ids`. `nvidia` / `amd` default to what this node's drivers publish."""
    env = os.environ if env is None else env
    ids = [str(i).strip() for i in gpu_ids]
    if not ids:
        cpus = [d for d in vulkan if d.get("type") == "cpu"]
        if not cpus:
            raise DeviceMapError("this worker has no GPU (--gpus-per-worker 0) and the node has no CPU Vulkan "
                                 "device; install lavapipe (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)")
        return cpus[0]["index"]
    if len(ids) > 1:
        raise DeviceMapError(f"Ray gave this worker {len(ids)} GPUs ({', '.join(ids)}) but a model runs on one "
                             "Vulkan device: use --gpus-per-worker 1, or a fraction to share a GPU")
    gpu_id = ids[0]
    if gpu_id.upper().startswith("MIG-"):
        raise DeviceMapError(f"GPU {gpu_id} is a MIG instance, which Vulkan does not expose as a device")
    uuid = normalize_uuid(gpu_id)
    if uuid is not None:
        return _one([d for d in vulkan if normalize_uuid(d.get("uuid")) == uuid], f"GPU {gpu_id}", vulkan)
    if not gpu_id.isdigit():
        raise DeviceMapError(f"Ray gave this worker GPU {gpu_id!r}, neither an index nor a UUID")
    index = int(gpu_id)
    nvidia = nvidia_gpus() if nvidia is None else list(nvidia)
    table, api = nvidia, "CUDA"
    if not nvidia:
        table, api = (amd_gpus() if amd is None else list(amd)), "ROCm"
    if not table:
        raise DeviceMapError(f"Ray gave this worker GPU {index}, but no NVIDIA GPU ({NVIDIA_PROC}, nvidia-smi) "
                             f"or AMD GPU ({KFD_NODES}) is visible on this node")
    if api == "CUDA" and len({g.name for g in table}) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        models = ", ".join(sorted({g.name for g in table}))
        raise DeviceMapError(f"this node has different GPU models ({models}) and CUDA numbers them fastest first, "
                             f"so which one CUDA's GPU {index} is cannot be told; start Ray with "
                             "CUDA_DEVICE_ORDER=PCI_BUS_ID in its environment")
    if index >= len(table):
        raise DeviceMapError(f"Ray gave this worker {api} GPU {index}, but the node has {len(table)} "
                             f"({', '.join(f'{g.index}: {g.pci_bus_id}' for g in table)})")
    gpu = table[index]
    what = f"{api} GPU {index} ({gpu.name}, uuid {gpu.uuid}, pci {gpu.pci_bus_id})"
    if gpu.uuid is not None:
        by_uuid = [d for d in vulkan if normalize_uuid(d.get("uuid")) == gpu.uuid]
        if by_uuid:
            return _one(by_uuid, what, vulkan)
    if gpu.pci_bus_id is not None:
        by_pci = [d for d in vulkan if normalize_pci(d.get("pci_bus_id")) == gpu.pci_bus_id]
        silent = [d for d in vulkan if d.get("pci_bus_id") is None and d.get("type") != "cpu"]
        if not by_pci and silent:
            raise DeviceMapError(f"{what} matches no Vulkan device by UUID or PCI address, and "
                                 f"{_describe(silent[0])} does not report its PCI address (no VK_EXT_pci_bus_info), "
                                 "so it may or may not be that GPU; update its driver")
        return _one(by_pci, what, vulkan)
    return _one([], what, vulkan)


def worker_device(gpu_ids: Sequence) -> dict:
    """In a worker: the eyecare.devices() entry for its Ray GPU ids. The caller sets EYECARE_DEVICE to its
    index before the model creates its Vulkan context."""
    from eyecare.core import devices

    vulkan = devices()
    index = map_device(gpu_ids, vulkan)
    return next(d for d in vulkan if d["index"] == index)
