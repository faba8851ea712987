"""The device layer: listing devices, and a machine with no Vulkan driver, where importing eyecare works
and the first use of the device says what to install."""
import os
import re
import subprocess
import sys
from pathlib import Path

import eyecare


def test_devices_lists_lavapipe_or_a_gpu():
    devices = eyecare.devices()
    assert devices and {"index", "name", "type", "subgroup_size", "max_storage_buffer_range"} <= set(devices[0])


def _vulkaninfo_devices() -> list:
    """deviceUUID and PCI address of each GPUn section of `vulkaninfo` (Khronos' tool, Debian vulkan-tools)."""
    text = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=120, check=True).stdout
    sections = re.split(r"^GPU(\d+):\s*$", text, flags=re.MULTILINE)[1:]
    found = []
    for number, body in zip(sections[0::2], sections[1::2]):
        uuid = re.search(r"^\s*deviceUUID\s*=\s*([0-9a-f-]+)", body, re.MULTILINE).group(1)
        pci = {key: int(value) for key, value in
               re.findall(r"^\s*pci(Domain|Bus|Device|Function)\s*=\s*(\d+)", body, re.MULTILINE)}
        bus_id = (f"{pci['Domain']:04x}:{pci['Bus']:02x}:{pci['Device']:02x}.{pci['Function']:x}"
                  if len(pci) == 4 else None)
        found.append((int(number), uuid, bus_id))
    return found


def test_device_identity_matches_vulkaninfo():
    expected = _vulkaninfo_devices()
    ours = [(d["index"], d["uuid"], d["pci_bus_id"]) for d in eyecare.devices()]
    assert ours == expected
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", uuid) for _, uuid, _ in ours)
    assert eyecare.device_info()["uuid"] in {uuid for _, uuid, _ in ours}


def test_no_driver_gives_a_clear_error_on_first_use(tmp_path):
    script = ("import eyecare, numpy as np\n"
              "try:\n    eyecare.tensor(np.zeros(3))\n"
              "except eyecare.NoDeviceError as e:\n    print('NoDeviceError:', e)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(eyecare.__file__).resolve().parent.parent),
               VK_ICD_FILENAMES=str(tmp_path / "none.json"), VK_DRIVER_FILES=str(tmp_path / "none.json"),
               EYECARE_VALIDATE="0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NoDeviceError:" in result.stdout and "mesa-vulkan-drivers" in result.stdout, result.stdout
