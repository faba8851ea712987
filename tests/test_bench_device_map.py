"""Mapping a Ray worker's GPU id to a Vulkan device, on machines described by fake driver files: NVIDIA's /proc
files and nvidia-smi, AMD's KFD topology, CPU-only nodes; and every ambiguous case refused with a clear reason."""
import pytest

from eyecare.bench.device_map import (DeviceMapError, Gpu, amd_gpus, map_device, normalize_pci, normalize_uuid,
                                      nvidia_gpus)

UUID_A = "6c0f2a1e-93b4-5d1c-8e2f-0a1b2c3d4e5f"
UUID_B = "1d2e3f40-5162-7384-95a6-b7c8d9e0f1a2"


def vk(index, uuid, pci, type_="discrete", name="GPU"):
    return {"index": index, "name": name, "type": type_, "uuid": uuid, "pci_bus_id": pci}


LAVAPIPE = vk(2, "6d657361-3232-2e33-2e36-000000000000", None, "cpu", "llvmpipe (LLVM 15.0.6, 256 bits)")


def write_nvidia_proc(root, gpus):
    for bus, uuid, model in gpus:
        folder = root / bus
        folder.mkdir(parents=True)
        (folder / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 150\nGPU UUID: \t GPU-{uuid}\nVideo BIOS: \t 96.00.74.00.01\n"
            f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\n"
            "Device Minor: \t 1\nGPU Excluded:\t No\n")
    return str(root)


def test_normalizing_the_names_of_a_gpu():
    assert normalize_uuid("GPU-" + UUID_A.upper()) == UUID_A.replace("-", "")
    assert normalize_uuid(UUID_A) == normalize_uuid("GPU-" + UUID_A)
    assert normalize_uuid("GPU-1234") is None and normalize_uuid(None) is None
    assert normalize_pci("00000000:18:00.0") == "0000:18:00.0"          # nvidia-smi's 8-digit domain
    assert normalize_pci("0001:AF:1f.7") == "0001:af:1f.7"
    assert normalize_pci("3b:00.0") == "0000:3b:00.0"
    assert normalize_pci("3b:00") is None and normalize_pci("") is None


def test_nvidia_gpus_from_proc_are_in_pci_order(tmp_path):
    root = write_nvidia_proc(tmp_path / "gpus", [("0000:86:00.0", UUID_B, "NVIDIA H100 80GB HBM3"),
                                                 ("0000:18:00.0", UUID_A, "NVIDIA H100 80GB HBM3")])
    gpus = nvidia_gpus(root, run=lambda argv: pytest.fail("nvidia-smi must not be needed"))
    assert gpus == [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "NVIDIA H100 80GB HBM3"),
                    Gpu(1, UUID_B.replace("-", ""), "0000:86:00.0", "NVIDIA H100 80GB HBM3")]


def test_nvidia_gpus_from_nvidia_smi_when_proc_is_absent(tmp_path):
    asked = []

    def smi(argv):
        asked.append(argv)
        return (f"1, 00000000:86:00.0, GPU-{UUID_B}, NVIDIA A100-SXM4-40GB\n"
                f"0, 00000000:18:00.0, GPU-{UUID_A}, NVIDIA A100-SXM4-40GB\n")

    gpus = nvidia_gpus(str(tmp_path / "absent"), run=smi)
    assert asked == [["nvidia-smi", "--query-gpu=index,pci.bus_id,uuid,name", "--format=csv,noheader"]]
    assert [(g.index, g.pci_bus_id) for g in gpus] == [(0, "0000:18:00.0"), (1, "0000:86:00.0")]
    assert gpus[1].uuid == UUID_B.replace("-", "")


def test_amd_gpus_from_the_kfd_topology(tmp_path):
    root = tmp_path / "nodes"
    # node 0 is the CPU; nodes 1 and 2 are GPUs at 0000:c3:00.0 and 0001:03:00.0
    for node, gpu_id, location, domain in [(0, "0", 0, 0), (1, "4242", 0xC300, 0), (2, "777", 0x0300, 1)]:
        folder = root / str(node)
        folder.mkdir(parents=True)
        (folder / "gpu_id").write_text(gpu_id + "\n")
        (folder / "properties").write_text(f"cpu_cores_count 0\nsimd_count 440\nlocation_id {location}\n"
                                           f"domain {domain}\nunique_id 1234\n")
    gpus = amd_gpus(str(root))
    assert [(g.index, g.pci_bus_id) for g in gpus] == [(0, "0000:c3:00.0"), (1, "0001:03:00.0")]
    vulkan = [vk(0, UUID_A, "0001:03:00.0", name="AMD Radeon (RADV)"),
              vk(1, UUID_B, "0000:c3:00.0", name="AMD Radeon (RADV)"), LAVAPIPE]
    assert map_device(["0"], vulkan, env={}, nvidia=[], amd=gpus) == 1
    assert map_device(["1"], vulkan, env={}, nvidia=[], amd=gpus) == 0


def test_nvidia_ids_map_by_uuid_even_when_vulkan_lists_gpus_in_another_order(tmp_path):
    table = nvidia_gpus(write_nvidia_proc(tmp_path / "gpus", [("0000:18:00.0", UUID_A, "NVIDIA L4"),
                                                              ("0000:86:00.0", UUID_B, "NVIDIA L4")]))
    # Vulkan lists the second card first, and this driver reports no PCI address: the UUID decides.
    vulkan = [vk(0, UUID_B, None, name="NVIDIA L4"), vk(1, UUID_A, None, name="NVIDIA L4"), LAVAPIPE]
    assert map_device(["0"], vulkan, env={}, nvidia=table) == 1
    assert map_device([1], vulkan, env={}, nvidia=table) == 0
    # CUDA_VISIBLE_DEVICES may hold UUIDs, and then so do Ray's ids.
    assert map_device(["GPU-" + UUID_B], vulkan, env={}, nvidia=table) == 0


def test_pci_address_is_used_when_the_uuids_differ():
    table = [Gpu(0, None, "0000:18:00.0", "NVIDIA L4"), Gpu(1, None, "0000:86:00.0", "NVIDIA L4")]
    vulkan = [vk(0, UUID_A, "0000:86:00.0"), vk(1, UUID_B, "0000:18:00.0"), LAVAPIPE]
    assert map_device(["0"], vulkan, env={}, nvidia=table) == 1


def test_no_gpu_means_lavapipe():
    assert map_device([], [vk(0, UUID_A, "0000:18:00.0"), LAVAPIPE], env={}, nvidia=[], amd=[]) == 2
    with pytest.raises(DeviceMapError, match="no CPU Vulkan device; install lavapipe.*mesa-vulkan-drivers"):
        map_device([], [vk(0, UUID_A, "0000:18:00.0")], env={}, nvidia=[], amd=[])


@pytest.mark.parametrize("gpu_ids, vulkan, nvidia, env, message", [
    (["0", "1"], [LAVAPIPE], [], {}, "gave this worker 2 GPUs .* use --gpus-per-worker 1"),
    (["MIG-" + UUID_A], [LAVAPIPE], [], {}, "MIG instance"),
    (["0"], [LAVAPIPE], [], {}, "no NVIDIA GPU .* or AMD GPU .* is visible"),
    (["3"], [vk(0, UUID_A, "0000:18:00.0"), LAVAPIPE], [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "L4")], {},
     "CUDA GPU 3, but the node has 1"),
    # The same card through two drivers (e.g. the proprietary one and NVK): two Vulkan devices, one UUID.
    (["0"], [vk(0, UUID_A, "0000:18:00.0"), vk(1, UUID_A, "0000:18:00.0"), LAVAPIPE],
     [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "L4")], {}, "matches 2 Vulkan devices, so which one"),
    # Different models and CUDA's default fastest-first order: index 0 could be either card.
    (["0"], [vk(0, UUID_A, "0000:18:00.0"), vk(1, UUID_B, "0000:86:00.0")],
     [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "NVIDIA L4"),
      Gpu(1, UUID_B.replace("-", ""), "0000:86:00.0", "NVIDIA A100")], {}, "CUDA_DEVICE_ORDER=PCI_BUS_ID"),
    # A card the Vulkan driver does not list.
    (["0"], [LAVAPIPE], [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "L4")], {},
     "is not among the Vulkan devices .*llvmpipe.*driver installed"),
    # No UUID match and a GPU that does not report its PCI address: it might be that card.
    (["0"], [vk(0, UUID_B, None), LAVAPIPE], [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "L4")], {},
     "does not report its PCI address"),
])
def test_ambiguous_or_impossible_mappings_are_refused(gpu_ids, vulkan, nvidia, env, message):
    with pytest.raises(DeviceMapError, match=message):
        map_device(gpu_ids, vulkan, env=env, nvidia=nvidia, amd=[])


def test_mixed_models_are_fine_in_pci_order():
    table = [Gpu(0, UUID_A.replace("-", ""), "0000:18:00.0", "NVIDIA L4"),
             Gpu(1, UUID_B.replace("-", ""), "0000:86:00.0", "NVIDIA A100")]
    vulkan = [vk(0, UUID_B, "0000:86:00.0"), vk(1, UUID_A, "0000:18:00.0")]
    assert map_device(["1"], vulkan, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, nvidia=table) == 0


def test_this_machine_maps_a_gpu_less_worker_to_a_real_vulkan_device():
    import eyecare
    from eyecare.bench.device_map import worker_device

    chosen = worker_device([])
    assert chosen in eyecare.devices() and chosen["type"] == "cpu"
