"""What the GPU backends (ort-cuda, tensorrt, torch-cuda) share: streaming state that stays on the device.

The Runner contract is numpy in, numpy out. A GPU backend keeps everything else in device memory: between
the chunks of a stream only the chunk goes in and the data outputs come out, while the state tensors
(past_i/present_i) stay where the graph wrote them. A backend implements three hooks:

    _device_step(spec, arrays, env, past) -> (data outputs as numpy, present)
        one call of a graph; `past` is the backend's DeviceState from the previous chunk, or None for the
        zero state; `present` is the new DeviceState (None for stateless graphs).
    _state_from_host(spec, env, state) -> DeviceState       numpy state (Runner.run's `past`) to the device
    _state_to_host(spec, state) -> {name: numpy}            and back (Runner.run returns present_i)

and, for benchmarks, `device_call(graph, inputs)`: a prepared call on device-resident inputs whose outputs
stay on the device and which returns once the GPU is done, so timings measure the backend, not the bus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vae_deploy.runtime.runner import Runner, Stream, check_held_state, check_outputs
from vae_deploy.runtime.spec import GraphSpec


class DeviceState:
    """A stream's state tensors in a backend's device memory; `shapes` lets a stream refuse a size change."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]):
        self.shapes = tuple(tuple(s) for s in shapes)


class _Shape:
    """Stands for a device tensor in the output-shape check (which reads only `.shape`)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class DeviceRunner(Runner):
    """Base of the GPU backends; see the module docstring for the hooks."""

    def _device_step(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int],
                     past: DeviceState | None) -> tuple[dict[str, np.ndarray], DeviceState | None]:
        raise NotImplementedError

    def _state_from_host(self, spec: GraphSpec, env: dict[str, int],
                         state: dict[str, np.ndarray]) -> DeviceState:
        raise NotImplementedError

    def _state_to_host(self, spec: GraphSpec, state: DeviceState) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def device_call(self, graph: str, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
                    ) -> Callable[[], None]:
        """A zero-argument function running `graph` on these inputs, uploaded once, with the zero state;
        its outputs stay on the device and it returns when the GPU is done. For timing only."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Runner plumbing

    def _execute(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int],
                 state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        past = self._state_from_host(spec, env, state) if spec.state else None
        outputs, present = self._device_step(spec, arrays, env, past)
        if spec.state:
            outputs.update(self._state_to_host(spec, present))
        check_outputs(self.name, spec, env, outputs)
        return outputs

    def open_stream(self) -> DeviceStream:
        return DeviceStream(self)

    def _checked_step(self, spec: GraphSpec, arrays: dict[str, np.ndarray], env: dict[str, int],
                      past: DeviceState | None) -> tuple[dict[str, np.ndarray], DeviceState | None]:
        outputs, present = self._device_step(spec, arrays, env, past)
        shown: dict[str, Any] = dict(outputs)
        if spec.state:
            for st, shape in zip(spec.state, present.shapes, strict=True):
                shown[st.output] = _Shape(shape)
        check_outputs(self.name, spec, env, shown)
        return outputs, present


class DeviceStream(Stream):
    """A Stream whose state stays in the backend's device memory between chunks."""

    def __init__(self, runner: DeviceRunner):
        super().__init__(runner)
        self._device: dict[str, DeviceState | None] = {}

    def reset(self) -> None:
        self._device.clear()

    def _started(self, graph: str) -> bool:
        return graph in self._device

    def _hold(self, spec: GraphSpec, env: dict[str, int], state: dict[str, np.ndarray]) -> None:
        # The state a first-rule graph returned (to the host: it is one of its outputs) goes to the device
        # once, at the start of the stream.
        self._device[spec.name] = self.runner._state_from_host(spec, env, state)

    def _step(self, graph: str, chunk: Any) -> dict[str, np.ndarray]:
        runner = self.runner
        spec, arrays, env = runner._prepare(graph, chunk)
        past = self._device.get(graph)
        if past is not None:
            check_held_state(spec, env, past.shapes)
        outputs, present = runner._checked_step(spec, arrays, env, past)
        if spec.state:
            self._device[graph] = present
        return {t.name: outputs[t.name] for t in spec.outputs}

    def state(self, graph: str) -> dict[str, np.ndarray] | None:
        """The state a stream holds after its last `graph` chunk, copied to the host (for inspection)."""
        held = self._device.get(graph)
        if held is None:
            return None
        return self.runner._state_to_host(self.runner.graph(graph), held)

