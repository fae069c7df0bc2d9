"""Export profiles (TOML): how graphs are exported and how TensorRT engines are built from them.

The shipped profiles live in vae_deploy/export/profiles/ (cpu-fp32, cpu-int8, gpu-fp16, jetson-orin-fp16)
and are chosen by name; any other profile is given as a path. A profile file:

    name = "gpu-fp16"
    precision = "fp16"           # "fp32" | "fp16" | "int8" (ONNX Runtime static quantization, video models)
    opset = 18                   # 18 and up: torch's dynamo exporter; older: the legacy exporter
    keep_io_types = true         # fp16: graph inputs/outputs stay float32
    parity_batch_sizes = [1, 7, 128, 1000]
    [dynamic.batch]              # one table per symbolic dimension: TensorRT min/opt/max
    min = 1
    opt = 128
    max = 8192
    [tensorrt]                   # engines (`vae-deploy export --engine`, export/tensorrt_build.py)
    workspace_mb = 4096
    [quantization]               # int8 profiles: calibration clips and what is quantized (export/quantize.py)
    calibration = ["bikes", "bigbuckbunny"]

Ranges are per symbol (batch, frames, height, width), not per tensor: each graph spec turns them into
min/opt/max shapes of its own inputs (GraphSpec.profile_shapes), so one profile serves every model kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vae_deploy.config_io import from_dict, read_toml, to_dict
from vae_deploy.errors import ConfigError

# The shipped profiles (package data); the repository's top-level export/ folder links to them.
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass
class DimRange:
    min: int  # smallest size an engine must accept
    opt: int  # the size TensorRT tunes kernels for
    max: int  # largest size an engine must accept

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass
class TensorRTSettings:
    workspace_mb: int = 1024  # builder scratch memory (IBuilderConfig memory pool limit, WORKSPACE)
    builder_optimization_level: int = 3  # 0..5: higher builds slower and may find faster kernels
    # The default engine precision only (engine_cache.default_precision): fp16 where set, else fp32. Engines
    # are strongly typed and compute in their graph's types (export/tensorrt_build.py), so this allows no
    # fp16 kernels in an fp32 engine; it is set by the profiles whose graphs are fp16.
    fp16: bool = False


@dataclass
class QuantizationSettings:
    # int8 profiles only (export/quantize.py): ONNX Runtime static quantization, QDQ format, activation
    # ranges by MinMax calibration (its histogram-based percentile method failed here on calibration clips
    # of different frame sizes, onnxruntime 1.32).
    # Calibration sources: sample clip names, video files or image folders. Use training clips, never the
    # clips a model is judged on: the activation ranges are measured on them.
    calibration: list[str] = field(default_factory=lambda: ["bikes", "bigbuckbunny"])
    frames: int = 32  # frames read from each calibration source
    chunk: int = 8  # frames per calibration call; the streaming state is carried between calls
    short_side: int = 0  # working short side of the calibration frames; 0 = the model's own (manifest)
    op_types: list[str] = field(default_factory=lambda: ["Conv"])  # ONNX op types quantized; others stay fp32
    per_channel: bool = True  # one weight scale per output channel (the accurate choice for convs)
    # Integer types of activations and weights, and 7-bit weights (reduce_range). What they ask of the CPU is
    # recorded in the manifest (runtime/cpu_features.py): uint8 x int8 with 8-bit weights saturates on x86
    # CPUs without VNNI; 7-bit weights hold on every x86-64 CPU at the same speed (uint8 weights hold too,
    # but ran at 1.3x fp32's speed here against 2.8x: benchmarks/results/int8_cpu_parity.md).
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["uint8", "int8"] = "int8"
    reduce_range: bool = True
    average_ranges: bool = True  # each activation's range = the mean over calibration calls of each call's
    # min and max (ORT's CalibMovingAverage, which averages within one calibration pass), instead of the
    # extremes over all calls: a rare extreme value saturates rather than coarsening every other value's
    # step. On the default model: 26.10 dB on carphone_pristine against 26.02 with the extremes.
    min_psnr_db: float = 35.0  # parity rule for int8 graphs: PSNR of every output on real inputs vs fp32

    def __post_init__(self):
        if not self.calibration:
            raise ValueError("quantization.calibration must name at least one video")
        for name in ("frames", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"quantization.{name} must be at least 1, got {getattr(self, name)}")
        if self.short_side < 0:
            raise ValueError(f"quantization.short_side must be 0 (the model's) or positive, got "
                             f"{self.short_side}")
        if not self.op_types:
            raise ValueError("quantization.op_types must name at least one ONNX op type")


def _default_dynamic() -> dict[str, DimRange]:
    return {"batch": DimRange(1, 128, 8192)}


@dataclass
class ExportProfile:
    name: str = "cpu-fp32"  # recorded in the manifest; a file's stem when it does not set one
    precision: Literal["fp32", "fp16", "int8"] = "fp32"  # weights and compute of the ONNX graphs
    opset: int = 18  # ONNX opset of torch.onnx.export (dynamo exporter from 18, the legacy one below)
    keep_io_types: bool = True  # fp16: inputs/outputs stay float32 so callers need not change
    parity_batch_sizes: tuple[int, ...] = (1, 7, 128, 1000)  # random-input batches of the parity check
    dynamic: dict[str, DimRange] = field(default_factory=_default_dynamic)  # symbol -> min/opt/max
    tensorrt: TensorRTSettings = field(default_factory=TensorRTSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)  # int8 only

    def __post_init__(self):
        self.dynamic = {k: v if isinstance(v, DimRange) else from_dict(DimRange, v, where=f"dynamic.{k}")
                        for k, v in self.dynamic.items()}
        if not 7 <= self.opset <= 21:
            raise ValueError(f"opset {self.opset} is outside what the exporters support (7..21)")
        if not self.parity_batch_sizes or min(self.parity_batch_sizes) < 1:
            raise ValueError(f"parity_batch_sizes must be positive, got {self.parity_batch_sizes}")
        batch = self.dynamic.get("batch")
        if batch is not None and max(self.parity_batch_sizes) > batch.max:
            raise ValueError(f"parity batch {max(self.parity_batch_sizes)} is above dynamic.batch.max "
                             f"{batch.max}")

    @property
    def io_dtype(self) -> str:
        return "float16" if self.precision == "fp16" and not self.keep_io_types else "float32"

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        return {k: (v.min, v.opt, v.max) for k, v in self.dynamic.items()}

    def to_dict(self) -> dict:
        return to_dict(self)


def packaged_profiles() -> list[str]:
    """Names of the profiles shipped inside the package (vae_deploy/export/profiles/*.toml)."""
    return sorted(path.stem for path in PROFILE_DIR.glob("*.toml"))


def profile_path(path_or_name: str | Path) -> Path:
    """A bare name ("gpu-fp16": no suffix, no folder) -> the packaged profile; anything else is a path."""
    path = Path(path_or_name)
    if path.suffix or len(path.parts) != 1:
        return path
    # Names resolve inside the package, not the current directory: the same profiles from any folder and
    # from an installed wheel.
    packaged = PROFILE_DIR / f"{path.name}.toml"
    if not packaged.is_file():
        raise ConfigError(f"unknown export profile {path.name!r} (packaged profiles: "
                          f"{', '.join(packaged_profiles())}; or give the path of a TOML file)")
    return packaged


def load_profile(path_or_name: str | Path | None) -> ExportProfile:
    """A profile from a TOML file or a packaged profile's name (profile_path); None, the defaults."""
    if path_or_name is None:
        return ExportProfile()
    path = profile_path(path_or_name)
    data = read_toml(path)
    data.setdefault("name", path.stem)
    try:
        return from_dict(ExportProfile, data, where=str(path))
    except ConfigError as exc:
        raise ConfigError(f"export profile {path}: {exc}") from None
