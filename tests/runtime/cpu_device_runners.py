"""The GPU backends' runner logic on the CPU, for tests on machines without a GPU.

OrtBoundCpuRunner is ort-cuda's IO-binding runner (runtime/ort_cuda.py) on CPU memory and the CPU execution
provider (cuda_graph mode keeps its static buffers there but captures nothing); TorchCpuDeviceRunner is
torch-cuda's runner (device state, precision, fp16 guard) with device_type "cpu" (no CUDA graphs). Both
stream through runtime/device_runner.py's DeviceStream.
"""

from vae_deploy.runtime.ort_cuda import OrtDeviceRunner
from vae_deploy.runtime.torch_cuda_runner import TorchCudaRunner


class OrtBoundCpuRunner(OrtDeviceRunner):
    name = "ort-bound-cpu"
    device_type = "cpu"


class TorchCpuDeviceRunner(TorchCudaRunner):
    name = "torch-device-cpu"
    device_type = "cpu"
