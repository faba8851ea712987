"""eyecare: run EyecareGPT through Vulkan compute shaders on any GPU (or the CPU via lavapipe)."""
__version__ = "0.1.0"
