"""TensorRT engine cache: keys, optimization-profile shapes, and the staleness check (no tensorrt import).

A serialized engine is only valid for the exact ONNX graph, TensorRT version, GPU model and compute
capability, precision, optimization profile and builder settings (workspace, optimization level, whether
TF32 was allowed) it was built with; loading one built for anything else fails at best and gives wrong
results at worst. So each engine is stored under a key over all of these:

    engines/<graph>-<precision>-<digest16>.engine    the serialized engine
    engines/<graph>-<precision>-<digest16>.json      its key (every field, readable) + the engine's sha256

`find_engine` returns the engine whose key equals the key of the current setup, after checking the engine
file's sha256; if the folder only holds engines built for something else it raises StaleEngineError naming
what differs (e.g. "TensorRT 10.3.0 (now 10.8.0)"), so a stale engine is rebuilt, never loaded. The builder
(export/tensorrt_build.py) and the runner (runtime/tensorrt_runner.py) compute keys with the same code here.

Profile shapes come from the export profile's per-symbol ranges through each graph's spec
(GraphSpec.profile_shapes), adjusted to what the graph accepts: dimensions with a required multiple (frame
sizes of a stride-8 model, chunks of a temporally strided one) are rounded into range, and video graphs use
VIDEO_BATCH instead of the profile's batch range (see there).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.files import sha256_file, write_bytes_atomic, write_json_atomic
from vae_deploy.runtime.spec import GraphSpec

ENGINE_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
# A profile's batch range is sized for images (the MLP up to 8192 per call); a video batch is whole clips,
# and an engine reserves activation memory for its largest shape, so video graphs take 1..2 clips, tuned
# for 1 (the streaming case). 2 is what the parity check feeds video graphs (GraphSpec.max_parity_batch);
# each extra clip multiplies the largest activation (at 2 x 16 frames x 1088 x 1920 the default model's
# decoder already holds a 1.6e9-element tensor; many TensorRT layers before 10.10 stop at 2^31 elements).
VIDEO_BATCH = (1, 1, 2)


class StaleEngineError(ModelFormatError):
    """No engine in the folder was built for this graph, TensorRT, GPU, precision and profile."""


@dataclass(frozen=True)
class EngineEnv:
    """The machine side of a key: what TensorRT and which GPU would run the engine."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


@dataclass
class EngineKey:
    graph: str  # "encoder" / "decoder"
    onnx_sha256: str  # the graph file the engine was built from
    precision: str  # "fp32" | "fp16" | "int8"
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict[str, list[list[int]]]  # input name -> [min, opt, max] shape
    builder: dict[str, Any] = field(default_factory=dict)  # workspace_mb, optimization level, tf32

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"engine precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}")
        self.profile = {k: [list(map(int, s)) for s in v] for k, v in self.profile.items()}

    @classmethod
    def for_graph(cls, graph: str, onnx_sha256: str, precision: str, env: EngineEnv,
                  profile: dict[str, Any], builder: dict[str, Any]) -> EngineKey:
        return cls(graph, onnx_sha256, precision, env.tensorrt_version, env.gpu_name, env.compute_capability,
                   profile, dict(builder))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 over the canonical JSON of every field (order-independent)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def stem(self) -> str:
        return f"{self.graph}-{self.precision}-{self.digest()[:16]}"

    def paths(self, model_dir: Path) -> tuple[Path, Path]:
        folder = Path(model_dir) / ENGINE_DIR
        return folder / f"{self.stem}.engine", folder / f"{self.stem}.json"


# ---------------------------------------------------------------- profile shapes


Ranges = dict[str, tuple[int, int, int]]  # symbol -> (min, opt, max)


def engine_ranges(spec: GraphSpec, ranges: Ranges) -> Ranges:
    """The export profile's per-symbol (min, opt, max), adjusted for this graph (see module docstring)."""
    out = {}
    for symbol, (lo, opt, hi) in ranges.items():
        if symbol == "batch" and spec.stream_axis:
            lo, opt, hi = VIDEO_BATCH[0], VIDEO_BATCH[1], min(hi, VIDEO_BATCH[2])
        m = spec.dim_multiples.get(symbol, 1)
        lo2, hi2 = -(-lo // m) * m, hi // m * m
        if lo2 > hi2 or lo2 < 1:
            raise ConfigError(f"{spec.name}: the profile range {symbol} {lo}..{hi} holds no multiple of {m}")
        opt2 = min(max(round(opt / m) * m, lo2), hi2)
        out[symbol] = (lo2, opt2, hi2)
    return out


def engine_profile(spec: GraphSpec, ranges: Ranges) -> dict[str, list[list[int]]]:
    """input name -> [min, opt, max] shapes of a TensorRT optimization profile (state inputs included)."""
    shapes = spec.profile_shapes(engine_ranges(spec, ranges))
    return {name: [list(s) for s in three] for name, three in shapes.items()}


def profile_ranges(export_profile: dict[str, Any]) -> Ranges:
    """Per-symbol ranges from an export profile as the manifest records it (export_profile.dynamic)."""
    dynamic = export_profile.get("dynamic") or {}
    try:
        return {k: (int(v["min"]), int(v["opt"]), int(v["max"])) for k, v in dynamic.items()}
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFormatError(f"the manifest's export profile has malformed dynamic ranges: {dynamic}"
                               ) from err


# ---------------------------------------------------------------- store and find


def write_engine(model_dir: Path, key: EngineKey, data: bytes) -> Path:
    """Store a serialized engine and its key (engine first, then the sidecar that vouches for it)."""
    engine, sidecar = key.paths(model_dir)
    write_bytes_atomic(engine, bytes(data))
    write_json_atomic(sidecar, {"key": key.to_dict(), "digest": key.digest(), "engine": engine.name,
                                "engine_sha256": sha256_file(engine)})
    return engine


def _differences(want: EngineKey, found: dict[str, Any]) -> list[str]:
    labels = {"onnx_sha256": "the ONNX graph", "precision": "precision", "tensorrt_version": "TensorRT",
              "gpu_name": "GPU", "compute_capability": "compute capability", "profile": "profile shapes",
              "builder": "builder settings"}
    diffs = []
    for name, label in labels.items():
        have, now = found.get(name), getattr(want, name)
        if have != now:
            if name in ("profile", "builder"):
                diffs.append(f"other {label}")
            elif name == "onnx_sha256":
                diffs.append(f"{label} {str(have)[:12]}... (now {now[:12]}...: re-exported)")
            else:
                diffs.append(f"{label} {have} (now {now})")
    return diffs


def find_engine(model_dir: Path, key: EngineKey) -> Path:
    """The cached engine for `key`, hash-checked; StaleEngineError says why there is none."""
    engine, sidecar = key.paths(model_dir)
    rebuild = ("rebuild with `vae-deploy export CKPT_DIR --out MODEL_DIR --engine` "
               "(or vae_deploy.export.tensorrt_build.build_engines)")
    if sidecar.is_file() and engine.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise StaleEngineError(f"{sidecar} is unreadable; {rebuild}") from err
        if record.get("digest") != key.digest() or record.get("key") != key.to_dict():
            raise StaleEngineError(f"{sidecar} does not describe this engine's key; {rebuild}")
        if sha256_file(engine) != record.get("engine_sha256"):
            raise StaleEngineError(f"{engine} was modified after it was built (sha256 differs); {rebuild}")
        return engine
    folder = Path(model_dir) / ENGINE_DIR
    others = []
    for path in sorted(folder.glob(f"{key.graph}-*.json")) if folder.is_dir() else []:
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("key", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        diffs = _differences(key, found)
        if diffs:
            others.append(f"{path.stem}: {', '.join(diffs)}")
    where = f"{model_dir}/{ENGINE_DIR}"
    if others:
        raise StaleEngineError(f"no TensorRT {key.precision} engine for the {key.graph} matches this setup "
                               f"({key.gpu_name}, sm {key.compute_capability}, TensorRT "
                               f"{key.tensorrt_version}); {where} has only stale ones: {'; '.join(others)}; "
                               f"{rebuild}")
    raise StaleEngineError(f"no TensorRT {key.precision} engine for the {key.graph} in {where}; {rebuild}")


def tf32_allowed(precision: str) -> bool:
    """Whether an engine of `precision` may use TF32 for its float32 layers.

    TensorRT allows TF32 unless told otherwise (BuilderFlag.TF32 is on by default): inner products with
    10-bit mantissas, errors near 1e-3, so an "fp32" engine built with it would miss the fp32 floor (max abs
    1e-5) by far. fp32 engines clear it; fp16 and int8 engines keep TensorRT's default, whose fp32 layers
    (casts at the float32 inputs and outputs, unquantized ops) are judged by the PSNR floor anyway.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"engine precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision != "fp32"


def builder_settings(export_profile: dict[str, Any], precision: str) -> dict[str, Any]:
    """The builder settings that change an engine, from an export profile as the manifest records it, and
    the engine's precision (TF32, see tf32_allowed)."""
    trt = export_profile.get("tensorrt") or {}
    return {"workspace_mb": int(trt.get("workspace_mb", 1024)),
            "builder_optimization_level": int(trt.get("builder_optimization_level", 3)),
            "tf32": tf32_allowed(precision)}


def default_precision(export_profile: dict[str, Any]) -> str:
    """The engine precision a model folder gets when none is asked for: fp16 where its export profile sets
    tensorrt.fp16 (the gpu and jetson profiles, whose graphs are fp16), else fp32. Engines compute in their
    graph's own types (strongly typed, export/tensorrt_build.py): the flag picks the engine, not kernels."""
    return "fp16" if (export_profile.get("tensorrt") or {}).get("fp16") else "fp32"
