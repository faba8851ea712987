"""The device layer: listing devices, and a machine with no Vulkan driver, where importing eyecare works
and the first use of the device says what to install."""
import os
import subprocess
import sys
from pathlib import Path

import eyecare


def test_devices_lists_lavapipe_or_a_gpu():
    devices = eyecare.devices()
    assert devices and {"index", "name", "type", "subgroup_size", "max_storage_buffer_range"} <= set(devices[0])


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
