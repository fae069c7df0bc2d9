"""The `torch-cuda` backend: the PyTorch reference model on the GPU, eager or compiled.

The folder's reference/ checkpoint (the same weights the graphs were exported from) runs on a CUDA device.
torch is imported only when this runner is built. It is the GPU reference for the other GPU backends and,
compiled, the fast path that can be verified on this project's GPU machine. Options:

    precision      "fp32" | "fp16": fp16 converts the weights and computes in half precision; default:
                   the model folder's precision (an fp16 folder runs fp16)
    channels_last  conv weights (and the frame models' activations) in NHWC, the layout tensor cores want;
                   default True
    compile        False (eager) | True (torch.compile, mode "default") | a torch.compile mode name
                   ("default", "max-autotune-no-cudagraphs", ...); each new input shape compiles once
    cuda_graph     capture each fixed input shape (after warm-up) as a CUDA graph and replay it: static
                   input/state buffers per shape, state copied in and out on the GPU; default False
    graph_cache    shapes kept captured (least recently used dropped); default 8
    tf32           TF32 convolutions and matmuls in fp32; default False (fp32 is the parity reference and
                   PyTorch's own default enables TF32 for cuDNN convolutions)
    cudnn_benchmark  let cuDNN time its algorithms per shape (first call of a shape is slower); default True
    fp16_guard     fp16: NaN/inf/out-of-range outputs make that stage rerun in fp32 from then on (one
                   warning; runtime/fp16_guard.py); default True
    device_id      CUDA device; default 0
    threads        torch CPU threads for the host side (as `vae-deploy bench --threads` passes it)

Streaming state stays on the GPU as torch tensors between chunks (runtime/device_runner.py).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, MissingBackendError, ModelFormatError
from vae_deploy.runtime import cuda_device
from vae_deploy.runtime.device_runner import DeviceRunner, DeviceState
from vae_deploy.runtime.fp16_guard import Fp16Guard, bad_values
from vae_deploy.runtime.manifest import require_reference
from vae_deploy.runtime.runner import module_available
from vae_deploy.runtime.spec import GraphSpec


class TorchState(DeviceState):
    def __init__(self, shapes, tensors: list):
        super().__init__(shapes)
        self.tensors = tensors


class _Captured:
    """One input shape in cuda_graph mode: static inputs and past state, the graph, its static outputs."""

    def __init__(self, torch, fn, inputs: list, past: list, warmup: int = 2):
        self.inputs, self.past = inputs, past
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and compilation) outside the capture, as PyTorch requires
            for _ in range(warmup):
                fn(*inputs, *past)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out = fn(*inputs, *past)
        self.outputs = [out] if isinstance(out, torch.Tensor) else list(out)


class TorchCudaRunner(DeviceRunner):
    name = "torch-cuda"
    install_hint = "PyTorch with CUDA and an NVIDIA GPU (pip install 'vae-deploy[train]' with a CUDA torch)"
    uses_gpu = True
    OPTIONS = {"precision": str, "channels_last": bool, "compile": (bool, str), "cuda_graph": bool,
               "graph_cache": int, "tf32": bool, "cudnn_benchmark": bool, "fp16_guard": bool,
               "device_id": int, "threads": int, "entry_point": str}
    # The device logic (state, precision, guard, compile) does not depend on the device; tests run it with
    # device_type "cpu" where there is no GPU (no CUDA graphs there).
    device_type = "cuda"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for module in ("torch", "safetensors"):
            if not module_available(module):
                return f"{module} is not installed"
        return cuda_device.unavailable_reason()

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        import torch

        if self.device_type == "cuda" and not torch.cuda.is_available():
            raise MissingBackendError(f"backend 'torch-cuda' needs a CUDA build of torch and a GPU; this "
                                      f"torch ({torch.__version__}) sees no CUDA device; use --backend torch")
        self._torch = torch
        if "threads" in self.options:  # host-side work (uploads, conversions); `bench --threads` passes it
            torch.set_num_threads(int(self.options["threads"]))
        self.device = torch.device(self.device_type, int(self.options.get("device_id", 0)))
        self.precision = str(self.options.get("precision", self.manifest.precision))
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError(f"{self.name}: precision must be fp32 or fp16, got {self.precision!r}")
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.channels_last = bool(self.options.get("channels_last", True))
        compile_opt = self.options.get("compile", False)
        self.compile_mode = "default" if compile_opt is True else (compile_opt or None)
        self.cuda_graph = bool(self.options.get("cuda_graph", False))
        if self.cuda_graph and self.device_type != "cuda":
            raise ConfigError(f"{self.name}: cuda_graph needs a CUDA device")
        self.capacity = int(self.options.get("graph_cache", 8))
        self.tf32 = bool(self.options.get("tf32", False))
        self.cudnn_benchmark = bool(self.options.get("cudnn_benchmark", True))
        guard = self.precision == "fp16" and bool(self.options.get("fp16_guard", True))
        self._guard = Fp16Guard(self.name, guard)
        self.model = self._build(self.dtype)
        self._fns = {name: self._function(self.model, spec, compiled=True)
                     for name, spec in self.manifest.graphs.items()}
        self._graphs: dict[str, OrderedDict] = {name: OrderedDict() for name in self.manifest.graphs}
        self._fp32_fns: dict[str, Any] = {}

    def _build(self, dtype):
        from vae_deploy.models.checkpoint import load_model

        torch = self._torch
        reference = require_reference(self.model_dir, self.manifest)
        # entry_point: a --from factory the user named (verify --from); the folder alone never picks one
        model, config = load_model(reference, entry_point=self.options.get("entry_point"))
        if config["kind"] != self.manifest.kind:
            raise ModelFormatError(f"{reference} holds a {config['kind']!r} model but the manifest says "
                                   f"{self.manifest.kind!r}")
        model = model.eval().to(self.device, dtype)
        if self.channels_last:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 4:
                        p.data = p.data.contiguous(memory_format=torch.channels_last)
                    elif p.dim() == 5:
                        p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        return model

    def _function(self, model, spec: GraphSpec, compiled: bool):
        method = getattr(model, spec.method, None)
        if method is None:
            raise ModelFormatError(f"{self.manifest.kind!r} models have no method {spec.method!r}, which the "
                                   f"{spec.name} graph names")
        if compiled and self.compile_mode:
            return self._torch.compile(method, mode=self.compile_mode, dynamic=False)
        return method

    @contextlib.contextmanager
    def _mode(self):
        """Inference mode with this runner's TF32/cuDNN settings, restored afterwards (they are global)."""
        torch = self._torch
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            cuda = self.device_type == "cuda"
            device = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
            with torch.backends.cudnn.flags(enabled=True, benchmark=self.cudnn_benchmark,
                                            deterministic=False, allow_tf32=self.tf32), \
                    torch.inference_mode(), device:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul

    # ------------------------------------------------------------------ device memory

    def _upload(self, array: np.ndarray, dtype=None):
        return self._torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype or self.dtype)

    def _zeros(self, spec: GraphSpec, env: dict[str, int], dtype) -> list:
        return [self._torch.zeros(shape, dtype=dtype, device=self.device) for shape in spec.state_shapes(env)]

    def _state_from_host(self, spec, env, state) -> TorchState:
        return TorchState(spec.state_shapes(env), [self._upload(state[st.input]) for st in spec.state])

    def _state_to_host(self, spec, state: TorchState) -> dict[str, np.ndarray]:
        return {st.output: t.float().cpu().numpy().astype(st.dtype, copy=False)
                for st, t in zip(spec.state, state.tensors, strict=True)}

    # ------------------------------------------------------------------ running

    def _call(self, fn, spec: GraphSpec, arrays, env, past: TorchState | None, dtype, graph_key=None):
        """(data outputs on the device, present tensors) of one call of `fn`."""
        torch = self._torch
        inputs = [self._upload(arrays[t.name], dtype) for t in spec.inputs]
        past_tensors = ([t.to(dtype) for t in past.tensors] if past is not None
                        else self._zeros(spec, env, dtype))
        if graph_key is None:
            out = fn(*inputs, *past_tensors)
            outs = [out] if isinstance(out, torch.Tensor) else list(out)
        else:
            captured = self._captured(spec, fn, graph_key, inputs, past_tensors)
            for static, value in zip(captured.inputs + captured.past, inputs + past_tensors, strict=True):
                static.copy_(value)
            captured.graph.replay()
            outs = captured.outputs
        if len(outs) != len(spec.output_names):
            raise ModelFormatError(f"{self.manifest.kind}.{spec.method} returned {len(outs)} tensors, the "
                                   f"{spec.name} graph has {len(spec.output_names)} outputs")
        n = len(spec.outputs)
        # Present state is cloned out of a captured graph's static outputs (the next replay overwrites them).
        present = [t.clone() if graph_key is not None else t for t in outs[n:]]
        return outs[:n], present

    def _captured(self, spec: GraphSpec, fn, key, inputs, past) -> _Captured:
        cache = self._graphs[spec.name]
        captured = cache.get(key)
        if captured is None:
            while len(cache) >= self.capacity:
                cache.popitem(last=False)
            captured = _Captured(self._torch, fn, [t.clone() for t in inputs], [t.clone() for t in past])
            cache[key] = captured
        cache.move_to_end(key)
        return captured

    def _inspect(self, spec: GraphSpec, data: list) -> str | None:
        """fp16 guard on the device: one min/max pair per output, one transfer for all of them."""
        torch = self._torch
        pairs = torch.stack([torch.stack(torch.aminmax(t)).float() for t in data]).cpu().tolist()
        for t, (lo, hi) in zip(spec.outputs, pairs, strict=True):
            reason = bad_values(t, lo, hi)
            if reason:
                return f"output '{t.name}' has {reason}"
        return None

    def _device_step(self, spec, arrays, env, past):
        graph = spec.name
        key = tuple(arrays[t.name].shape for t in spec.inputs) if self.cuda_graph else None
        with self._mode():
            if graph in self._fp32_fns:
                data, present = self._call(self._fp32_fns[graph], spec, arrays, env, past,
                                           self._torch.float32)
            else:
                data, present = self._call(self._fns[graph], spec, arrays, env, past, self.dtype, key)
                if self._guard.watching(graph):
                    reason = self._inspect(spec, data)
                    if reason:
                        self._guard.fall_back(graph, reason)
                        fp32 = self._build(self._torch.float32)
                        self._fp32_fns[graph] = self._function(fp32, spec, compiled=False)
                        data, present = self._call(self._fp32_fns[graph], spec, arrays, env, past,
                                                   self._torch.float32)
            host = {t.name: d.float().cpu().numpy().astype(t.dtype, copy=False)
                    for t, d in zip(spec.outputs, data, strict=True)}
        state = TorchState(spec.state_shapes(env), present) if spec.state else None
        return host, state

    def _synchronize(self) -> None:
        if self.device_type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def device_call(self, graph, inputs, cuda_graph: bool | None = None):
        """See DeviceRunner.device_call; cuda_graph overrides the runner's option for this call (timing
        a compiled model with and without a captured graph without compiling it twice)."""
        spec, arrays, env = self._prepare(graph, inputs)
        fn = self._fns[graph]
        with self._mode():
            xs = [self._upload(arrays[t.name]) for t in spec.inputs]
            past = self._zeros(spec, env, self.dtype)
            if self.cuda_graph if cuda_graph is None else cuda_graph:
                key = tuple(arrays[t.name].shape for t in spec.inputs)
                captured = self._captured(spec, fn, key, xs, past)

                def replay():
                    captured.graph.replay()
                    self._synchronize()
                return replay

        def call():
            with self._mode():
                fn(*xs, *past)
            self._synchronize()
        return call

    def _close(self) -> None:
        self._graphs.clear()
        self._fns.clear()
        self._fp32_fns.clear()
        self.model = None
