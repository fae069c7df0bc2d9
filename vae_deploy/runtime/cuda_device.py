"""The NVIDIA GPU through the CUDA driver API (ctypes on libcuda): no torch, no cuda-python.

Two jobs, both without a heavy import:
- Cheap availability checks for the GPU backends (`unavailable_reason`): is there a driver, and a device?
  `available_backends()` calls this for every GPU backend, so it must not import torch or onnxruntime.
- What the TensorRT backend needs besides TensorRT: the GPU's name and compute capability (part of the
  engine cache key), device buffers (`DeviceBuffer`) and a stream (`CudaStream`). Buffers are allocated in
  the device's primary context, the one the CUDA runtime (TensorRT, ONNX Runtime, PyTorch) uses, so their
  addresses are valid for those libraries too.

Every driver call is checked; a failure raises MissingBackendError (no device/driver) or VaeDeployError
with the driver's own error name.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import numpy as np

from vae_deploy.errors import MissingBackendError, VaeDeployError

# Where the driver library lives per platform (it ships with the NVIDIA driver, not with CUDA toolkits).
_LIBRARY_NAMES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
_ATTR_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_ATTR_CC_MINOR = 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR


class _Driver:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self._contexts: dict[int, ctypes.c_void_p] = {}

    def call(self, name: str, *args) -> None:
        result = getattr(self.lib, name)(*args)
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(text))
            label = text.value.decode() if text.value else f"error {result}"
            raise VaeDeployError(f"CUDA driver call {name} failed: {label}")

    def device(self, ordinal: int) -> ctypes.c_int:
        count = device_count()
        if not 0 <= ordinal < count:
            raise MissingBackendError(f"CUDA device {ordinal} does not exist (this machine has {count})")
        dev = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(dev), ordinal)
        return dev

    def make_current(self, ordinal: int) -> None:
        """Make the device's primary context current on this thread (retained once per process)."""
        ctx = self._contexts.get(ordinal)
        if ctx is None:
            ctx = ctypes.c_void_p()
            self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self.device(ordinal))
            self._contexts[ordinal] = ctx
        self.call("cuCtxSetCurrent", ctx)


@functools.lru_cache(maxsize=1)
def _load() -> _Driver | str:
    """The initialised driver, or the reason there is none (cached: loading is done once per process)."""
    lib = None
    for name in _LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return "no NVIDIA driver found (libcuda is missing: this machine has no NVIDIA GPU set up)"
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    for fn in ("cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2", "cuMemcpyDtoD_v2", "cuMemsetD8_v2", "cuMemFree_v2",
               "cuMemAlloc_v2"):
        getattr(lib, fn).restype = ctypes.c_int
    lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
    lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
    lib.cuMemcpyDtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t]
    lib.cuMemsetD8_v2.argtypes = [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t]
    lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
    lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    result = lib.cuInit(0)
    if result != 0:
        return f"the NVIDIA driver is present but cuInit failed (CUDA error {result}: no usable GPU)"
    return _Driver(lib)


def _driver() -> _Driver:
    driver = _load()
    if isinstance(driver, str):
        raise MissingBackendError(driver)
    return driver


def device_count() -> int:
    """Number of CUDA devices; 0 where there is no driver."""
    driver = _load()
    if isinstance(driver, str):
        return 0
    count = ctypes.c_int()
    driver.call("cuDeviceGetCount", ctypes.byref(count))
    return count.value


def unavailable_reason(ordinal: int = 0) -> str | None:
    """Why no CUDA device `ordinal` can be used here, or None. Cheap: no torch, no onnxruntime."""
    driver = _load()
    if isinstance(driver, str):
        return driver
    count = device_count()
    if count == 0:
        return "the NVIDIA driver reports no CUDA device"
    if ordinal >= count:
        return f"CUDA device {ordinal} does not exist (this machine has {count})"
    return None


def device_identity(ordinal: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor"), e.g. ("NVIDIA H100 80GB HBM3", "9.0")."""
    driver = _driver()
    dev = driver.device(ordinal)
    name = ctypes.create_string_buffer(256)
    driver.call("cuDeviceGetName", name, 256, dev)
    major, minor = ctypes.c_int(), ctypes.c_int()
    driver.call("cuDeviceGetAttribute", ctypes.byref(major), _ATTR_CC_MAJOR, dev)
    driver.call("cuDeviceGetAttribute", ctypes.byref(minor), _ATTR_CC_MINOR, dev)
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def make_current(ordinal: int = 0) -> None:
    """Make device `ordinal`'s primary context current on this thread: the CUDA runtime inside TensorRT,
    ONNX Runtime or PyTorch then works on that device where a call names none (the TensorRT builder)."""
    _driver().make_current(ordinal)


class CudaStream:
    """A CUDA stream in the device's primary context; `handle` is what TensorRT's execute_async_v3 takes."""

    def __init__(self, ordinal: int = 0):
        self._driver = _driver()
        self.ordinal = ordinal
        self._driver.make_current(ordinal)
        handle = ctypes.c_void_p()
        self._driver.call("cuStreamCreate", ctypes.byref(handle), 0)
        self._handle = handle

    @property
    def handle(self) -> int:
        return self._handle.value or 0

    def synchronize(self) -> None:
        self._driver.call("cuStreamSynchronize", self._handle)

    def close(self) -> None:
        if self._handle is not None:
            self._driver.call("cuStreamDestroy_v2", self._handle)
            self._handle = None


class DeviceBuffer:
    """Device memory holding one array (shape and dtype remembered): upload, download, copy, zero.

    Copies are synchronous (cuMemcpy*), i.e. ordered after all work of blocking streams: callers that run
    work on a `CudaStream` synchronize it before downloading, so nothing here races with a running engine.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | str, ordinal: int = 0):
        self._driver = _driver()
        self._driver.make_current(ordinal)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        ptr = ctypes.c_uint64()
        # cuMemAlloc refuses 0 bytes; an empty tensor still needs a distinct valid address for TensorRT.
        self._driver.call("cuMemAlloc_v2", ctypes.byref(ptr), max(self.nbytes, 256))
        self.ptr = ptr.value

    @classmethod
    def from_array(cls, array: np.ndarray, ordinal: int = 0) -> DeviceBuffer:
        buf = cls(array.shape, array.dtype, ordinal)
        buf.upload(array)
        return buf

    def upload(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape != self.shape:
            raise VaeDeployError(f"upload of shape {array.shape} into a device buffer of shape {self.shape}")
        if self.nbytes:
            self._driver.call("cuMemcpyHtoD_v2", self.ptr, array.ctypes.data, self.nbytes)

    def download(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        if self.nbytes:
            self._driver.call("cuMemcpyDtoH_v2", out.ctypes.data, self.ptr, self.nbytes)
        return out

    def copy_from(self, other: DeviceBuffer) -> None:
        if (other.shape, other.dtype) != (self.shape, self.dtype):
            raise VaeDeployError(f"device copy of {other.dtype} {other.shape} into {self.dtype} {self.shape}")
        if self.nbytes:
            self._driver.call("cuMemcpyDtoD_v2", self.ptr, other.ptr, self.nbytes)

    def zero(self) -> None:
        if self.nbytes:
            self._driver.call("cuMemsetD8_v2", self.ptr, 0, self.nbytes)

    def free(self) -> None:
        if self.ptr:
            self._driver.call("cuMemFree_v2", self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the driver may already be gone
            pass
