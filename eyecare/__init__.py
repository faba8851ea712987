"""eyecare: run EyecareGPT, the ophthalmology vision-language model, through Vulkan compute shaders on
any GPU, or on the CPU through Mesa's lavapipe.

Importing eyecare never touches the device: the Vulkan context is created on first use, so a machine
without a driver can still import it (and gets a clear NoDeviceError when it tries to run a model)."""
__version__ = "0.1.0"

_LAZY = {
    # name: (module, attribute)
    "devices": ("core", "devices"),
    "device_info": ("core", "device_info"),
    "tensor": ("core", "tensor"),
    "empty": ("core", "empty"),
    "zeros": ("core", "zeros"),
    "EyecareError": ("_core", "EyecareError"),
    "FormatError": ("_core", "FormatError"),
    "NoDeviceError": ("_core", "NoDeviceError"),
    "DeviceError": ("_core", "DeviceError"),
    "DeviceMemoryError": ("_core", "DeviceMemoryError"),
    "Tensor": ("_core", "Tensor"),
    "EyecareProcessor": ("processor", "EyecareProcessor"),
    "EyecareGPT": ("model", "EyecareGPT"),
    "VisionTower": ("vision", "VisionTower"),
    "LanguageModel": ("language", "LanguageModel"),
}


def __getattr__(name):
    # Lazy, so that `import eyecare` (and eyecare.bench, which needs no device) stays cheap.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eyecare' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
