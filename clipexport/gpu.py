"""The GPU's name and compute capability from the CUDA driver (libcuda) through ctypes.

No torch, no NVML (absent on Jetson), no cuda-python: the driver library is present wherever a
TensorRT engine can run at all.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from clipexport.errors import DeviceUnavailableError

_COMPUTE_CAPABILITY_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"


def gpu_info(device: int = 0) -> GpuInfo:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise DeviceUnavailableError(
            "no NVIDIA driver found (libcuda.so.1 does not load): TensorRT engines need "
            "an NVIDIA GPU with its driver; use the onnxruntime backend on this machine"
        ) from None
    handle = ctypes.c_int()
    major, minor = ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for call, args in ((cuda.cuInit, (0,)), (cuda.cuDeviceGet, (ctypes.byref(handle), device))):
        status = call(*args)
        if status != 0:
            raise DeviceUnavailableError(
                f"the CUDA driver reports error {status} for GPU {device} "
                "(no GPU visible to this process?); check nvidia-smi / CUDA_VISIBLE_DEVICES"
            )
    cuda.cuDeviceGetName(name, len(name), handle)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_CAPABILITY_MAJOR, handle)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_CAPABILITY_MINOR, handle)
    return GpuInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")
