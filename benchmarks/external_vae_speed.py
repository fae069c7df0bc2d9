"""Exported diffusers VAEs on ONNX Runtime CPU against diffusers' own eager PyTorch: speed and peak memory.

    .venv/bin/python benchmarks/external_vae_speed.py [--size 256] [--rss-size 256] [--rounds 2]
    .venv/bin/python benchmarks/external_vae_speed.py --quick      # tiny models and frames: a smoke run

Models (random weights, seeded, `save_pretrained` into a work folder and exported with vae-deploy's own
`export_job(folder, out, real=0)`, the code behind `vae-deploy export FOLDER --out M`):
- Wan: `AutoencoderKLWan()` with diffusers' class defaults, which are the published Wan 2.1 VAE's widths
  (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2, temperal_downsample [False, True, True]).
- SD: `AutoencoderKL` with the Stable Diffusion 1.x VAE config (block_out_channels (128, 256, 512, 512),
  layers_per_block 2, latent_channels 4, 4 down/up blocks). diffusers' class defaults are a one-block toy
  (block_out_channels (64,), layers_per_block 1), so the SD config is given explicitly.

Cases, each side in its OWN fresh process (so one side's allocations never raise the other's peak RSS), the
sides alternating round by round so a burst of load from other jobs hits both:
- Wan decode, 17 frames (5 latent frames) at --size: ORT-CPU streaming decode (`runner.open_stream()`, then
  `step("decoder", z chunk)`: the first 1 + --latent-chunk latent frames, then --latent-chunk per step,
  which is what `vae-deploy run --chunk 4` does) against diffusers' eager `vae.decode(z)` of the same raw
  latents (seeded normal). Reported: seconds, frames/s, the ratio diffusers / ORT, the max abs difference
  of the two outputs (images in [0, 1]) and each process's peak RSS.
- Wan decode, 65 frames (17 latent frames) at --rss-size, one process per side: the same, to show how peak
  RSS grows with the clip (the stream writes each chunk to disk as it comes; diffusers returns the clip).
- Wan encode, 17 frames of the packaged clip at --size (skipped with --no-encode): ORT streaming encode
  (5 frames, then 4 per step) against diffusers' `vae.encode(x).latent_dist.mean`.
- SD decode at --kl-size: --kl-frames latents decoded one frame per call, ORT `run("decoder", z)` against
  diffusers' `vae.decode(z)`; per-frame medians.

Both sides use 2 threads (--threads): `torch.set_num_threads(2)` and the ort-cpu runner option threads=2.
Timed is the decode/encode call only; model loading is reported apart. The ORT processes never import torch
(the runtime is torch-free), so their RSS is what an edge install holds.
Writes benchmarks/results/external_vae_speed.{json,md} (--quick: under the temp folder unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent

WAN_FULL: dict = {}  # AutoencoderKLWan() class defaults = Wan 2.1 widths
SD_KL = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
         "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
         "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}
# --quick: the tiny configs of tests/models (seconds to run, not a measurement of anything)
WAN_TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
            "latents_std": [1.5, 2.0, 0.5, 1.0]}
KL_TINY = {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
           "block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8}


# ---------------------------------------------------------------- measured in a worker process
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_raw(f, array: np.ndarray) -> None:
    f.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())


def build_and_export(task: dict) -> dict:
    """Seeded random-weight diffusers model -> save_pretrained -> vae-deploy export (real=0)."""
    import diffusers
    import torch

    from vae_deploy.export.jobs import export_job

    manifest = Path(task["model"]) / "manifest.json"
    if task["reuse"] and manifest.is_file():  # an earlier export of the same seeded model (--work, --reuse)
        model = getattr(diffusers, task["class"]).from_pretrained(task["folder"])
        worst = {k: v["max_abs"] for k, v in json.loads(manifest.read_text())["parity"]["worst"].items()
                 if "present" not in k}
        return {"export_s": None, "parity_passed": json.loads(manifest.read_text())["parity"]["passed"],
                "parity_worst_max_abs": worst, "params": sum(p.numel() for p in model.parameters()),
                "config": {k: v for k, v in model.config.items() if not k.startswith("_")}}
    torch.manual_seed(task["seed"])
    model = getattr(diffusers, task["class"])(**task["config"])
    model.save_pretrained(task["folder"])
    params = sum(p.numel() for p in model.parameters())
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    del model
    started = time.perf_counter()
    result = export_job(Path(task["folder"]), Path(task["model"]), real=0, force=True,
                        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    worst: dict[str, float] = {}
    for c in result.report.comparisons:  # data outputs only: the present_i state tensors are not images
        if "present" not in c.output:
            key = f"{c.graph}/{c.output}"
            worst[key] = max(worst.get(key, 0.0), c.max_abs)
    return {"export_s": time.perf_counter() - started, "parity_passed": bool(result.report.passed),
            "parity_worst_max_abs": worst, "params": params, "config": config}


def ort_wan_decode(task: dict) -> dict:
    from vae_deploy.runtime import load_runner

    z = np.load(task["latents"])  # (1, T, C, h, w) raw latents
    c = task["latent_chunk"]
    started = time.perf_counter()
    with load_runner(task["model"], "ort-cpu", threads=task["threads"]) as runner:
        load_s = time.perf_counter() - started
        loaded_rss = peak_rss_mb()
        stream = runner.open_stream()
        bounds = [0, 1 + c, *range(1 + 2 * c, z.shape[1], c), z.shape[1]]
        bounds = sorted(set(b for b in bounds if b <= z.shape[1]))
        frames = 0
        with open(task["out"], "wb") as f:
            t = time.perf_counter()
            for a, b in zip(bounds, bounds[1:], strict=False):
                video = stream.step("decoder", z[:, a:b])["video"]
                frames += video.shape[1]
                write_raw(f, video)  # streamed to disk: the clip is never held whole
            seconds = time.perf_counter() - t
    return {"seconds": seconds, "frames": frames, "load_s": load_s, "rss_after_load_mb": loaded_rss,
            "peak_rss_mb": peak_rss_mb(), "steps": len(bounds) - 1}


def diffusers_load(task: dict):
    import diffusers
    import torch

    torch.set_num_threads(task["threads"])
    started = time.perf_counter()
    vae = getattr(diffusers, task["class"]).from_pretrained(task["folder"]).eval()
    return vae, time.perf_counter() - started


def diffusers_wan_decode(task: dict) -> dict:
    import torch

    vae, load_s = diffusers_load(task)
    loaded_rss = peak_rss_mb()
    z = torch.from_numpy(np.load(task["latents"])).permute(0, 2, 1, 3, 4).contiguous()  # NCTHW
    with torch.no_grad():
        t = time.perf_counter()
        sample = vae.decode(z).sample
        seconds = time.perf_counter() - t
    peak = peak_rss_mb()  # before the conversion below allocates another copy
    with open(task["out"], "wb") as f:
        write_raw(f, ((sample + 1) / 2).permute(0, 2, 1, 3, 4).numpy())  # the contract's NTCHW in [0, 1]
    return {"seconds": seconds, "frames": int(sample.shape[2]), "load_s": load_s,
            "rss_after_load_mb": loaded_rss, "peak_rss_mb": peak}


def ort_wan_encode(task: dict) -> dict:
    from vae_deploy.runtime import load_runner

    video = np.load(task["video"])  # (1, T, 3, H, W) in [0, 1]
    started = time.perf_counter()
    with load_runner(task["model"], "ort-cpu", threads=task["threads"]) as runner:
        load_s = time.perf_counter() - started
        loaded_rss = peak_rss_mb()
        stream = runner.open_stream()
        bounds = [0, *range(5, video.shape[1] + 1, 4)]
        with open(task["out"], "wb") as f:
            t = time.perf_counter()
            for a, b in zip(bounds, bounds[1:], strict=False):
                write_raw(f, stream.step("encoder", video[:, a:b])["mu"])
            seconds = time.perf_counter() - t
    return {"seconds": seconds, "frames": bounds[-1], "load_s": load_s, "rss_after_load_mb": loaded_rss,
            "peak_rss_mb": peak_rss_mb()}


def diffusers_wan_encode(task: dict) -> dict:
    import torch

    vae, load_s = diffusers_load(task)
    loaded_rss = peak_rss_mb()
    x = torch.from_numpy(np.load(task["video"]) * 2 - 1).permute(0, 2, 1, 3, 4).contiguous()
    with torch.no_grad():
        t = time.perf_counter()
        mean = vae.encode(x).latent_dist.mean
        seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    with open(task["out"], "wb") as f:
        write_raw(f, mean.permute(0, 2, 1, 3, 4).numpy())
    return {"seconds": seconds, "frames": int(x.shape[2]), "load_s": load_s, "rss_after_load_mb": loaded_rss,
            "peak_rss_mb": peak}


def ort_kl_decode(task: dict) -> dict:
    from vae_deploy.runtime import load_runner

    z = np.load(task["latents"])  # (F, 4, h, w) raw latents, one frame per call
    started = time.perf_counter()
    with load_runner(task["model"], "ort-cpu", threads=task["threads"]) as runner:
        load_s = time.perf_counter() - started
        spec = runner.graph("decoder")
        per_frame = []
        with open(task["out"], "wb") as f:
            for i in range(z.shape[0]):
                zi = z[i:i + 1] if len(spec.inputs[0].shape) == 4 else z[None, i:i + 1]
                t = time.perf_counter()
                out = runner.run("decoder", [zi])
                per_frame.append(time.perf_counter() - t)
                write_raw(f, next(iter(out.values())))
    return {"seconds_per_frame": per_frame, "load_s": load_s, "peak_rss_mb": peak_rss_mb(),
            "decoder_input": [str(d) for d in spec.inputs[0].shape]}


def diffusers_kl_decode(task: dict) -> dict:
    import torch

    vae, load_s = diffusers_load(task)
    z = torch.from_numpy(np.load(task["latents"]))
    per_frame = []
    with torch.no_grad(), open(task["out"], "wb") as f:
        for i in range(z.shape[0]):
            t = time.perf_counter()
            sample = vae.decode(z[i:i + 1]).sample
            per_frame.append(time.perf_counter() - t)
            write_raw(f, ((sample + 1) / 2).numpy())  # [0, 1] as the contract's frames
    return {"seconds_per_frame": per_frame, "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


WORKERS = {f.__name__: f for f in (build_and_export, ort_wan_decode, diffusers_wan_decode, ort_wan_encode,
                                   diffusers_wan_encode, ort_kl_decode, diffusers_kl_decode)}


# ---------------------------------------------------------------- the orchestrating process
def run_worker(kind: str, **task) -> dict:
    """One task in a fresh Python process; its last stdout line is the JSON result."""
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps({"kind": kind, **task})],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {kind} failed with exit status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.time() - started
    return result


def max_abs(a: Path, b: Path) -> float:
    x, y = np.fromfile(a, dtype=np.float32), np.fromfile(b, dtype=np.float32)
    if x.shape != y.shape:
        raise SystemExit(f"outputs differ in size: {a} {x.size} values, {b} {y.size}")
    return float(np.abs(x - y).max())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_clip(frames: int, size: int) -> np.ndarray:
    """The packaged clip's first `frames` frames, resized to size x size: (1, T, 3, H, W) in [0, 1]."""
    import cv2

    from vae_deploy.video.samples import sample_video_path

    cap = cv2.VideoCapture(str(sample_video_path("carphone_pristine")))
    out = []
    while len(out) < frames:
        ok, frame = cap.read()
        if not ok:
            raise SystemExit(f"the packaged clip holds fewer than {frames} frames")
        frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1]
        out.append(frame.transpose(2, 0, 1).astype(np.float32) / 255)
    cap.release()
    return np.stack(out)[None]


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and "cpu_model" not in info:
            info["cpu_model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and "simd_flags" not in info:
            flags = line.split(":", 1)[1].split()
            info["simd_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    mem = Path("/proc/meminfo").read_text().splitlines()[0] if Path("/proc/meminfo").is_file() else ""
    info["memory"] = " ".join(mem.split()[1:])
    return info


def exported(e: dict) -> str:
    how = "reused an earlier export (--reuse)" if e["export_s"] is None else f"export {e['export_s']:.0f} s"
    worst = max(e["parity_worst_max_abs"].values(), default=float("nan"))
    return f"{how}, parity {'passed' if e['parity_passed'] else 'FAILED'} (worst max abs {worst:.1e})"


def ratio_summary(ort: list[float], ref: list[float]) -> dict:
    return {"ort_s": ort, "diffusers_s": ref, "ort_median_s": float(np.median(ort)),
            "diffusers_median_s": float(np.median(ref)),
            "ratio_per_round": [r / o for o, r in zip(ort, ref, strict=True)],
            "ratio": float(np.median(ref) / np.median(ort))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny models and frames: a smoke run")
    parser.add_argument("--size", type=int, default=256, help="Wan frame size for the speed cases")
    parser.add_argument("--rss-size", type=int, help="Wan frame size for the 65-frame memory pair (--size)")
    parser.add_argument("--kl-size", type=int, default=512, help="SD frame size")
    parser.add_argument("--kl-frames", type=int, default=3, help="SD frames decoded per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the 17-frame decode")
    parser.add_argument("--latent-chunk", type=int, default=1, help="latent frames per ORT decode step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-encode", action="store_true", help="skip the Wan encode pair")
    parser.add_argument("--no-kl", action="store_true", help="skip the SD AutoencoderKL case")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the exported models already in --work (same seeded models)")
    parser.add_argument("--out", type=Path,
                        help="results stem (default: benchmarks/results/external_vae_speed)")
    parser.add_argument("--note", action="append", default=[], help="a line for the results' Notes section")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md from the existing .json (adding any --note)")
    args = parser.parse_args()
    if args.render_only:
        stem = args.out or RESULTS / "external_vae_speed"
        saved = json.loads(stem.with_suffix(".json").read_text())
        saved["notes"] = saved.get("notes", []) + args.note
        stem.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
        stem.with_suffix(".md").write_text(render(saved))
        return
    if args.worker:
        task = json.loads(args.worker)
        print(json.dumps(WORKERS[task.pop("kind")](task)), flush=True)
        return
    if args.quick:
        args.size, args.kl_size, args.kl_frames, args.rounds = 32, 64, 2, 1
    rss_size = args.rss_size or args.size
    with tempfile.TemporaryDirectory(prefix="external_vae_speed_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out = args.out or (Path(tmp) / "external_vae_speed" if args.quick else RESULTS / "external_vae_speed")
        result = run_all(args, work, rss_size)
        result["notes"] = args.note
        result["command"] = " ".join([".venv/bin/python", "benchmarks/external_vae_speed.py", *sys.argv[1:]])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(result))
        print(render(result))
        log(f"wrote {out.with_suffix('.json')} and .md")


def run_all(args, work: Path, rss_size: int) -> dict:
    threads = args.threads
    wan_cfg, kl_cfg = (WAN_TINY, KL_TINY) if args.quick else (WAN_FULL, SD_KL)
    started = time.time()
    result: dict = {"machine": machine(), "loadavg_before": os.getloadavg(), "threads": threads,
                    "quick": args.quick, "latent_chunk": args.latent_chunk,
                    "versions": {p: version(p) for p in ("torch", "diffusers", "onnxruntime", "onnx")}}

    wan = {"class": "AutoencoderKLWan", "folder": str(work / "wan_diffusers"), "threads": threads}
    log("Wan: build (seeded random weights), save_pretrained, export with vae-deploy")
    result["wan_export"] = run_worker("build_and_export", seed=0, config=wan_cfg, reuse=args.reuse,
                                      model=str(work / "wan_onnx"),
                                      **{k: wan[k] for k in ("class", "folder")})
    log(f"  {exported(result['wan_export'])}")
    spatial, z_dim = 8, result["wan_export"]["config"]["z_dim"]
    rng = np.random.default_rng(0)

    def wan_pair(frames: int, size: int, rounds: int, tag: str) -> dict:
        t_lat = 1 + (frames - 1) // 4
        latents = work / f"z_{tag}.npy"
        np.save(latents, rng.standard_normal((1, t_lat, z_dim, size // spatial, size // spatial),
                                             dtype=np.float32))
        runs: dict[str, list[dict]] = {"ort": [], "diffusers": []}
        for r in range(rounds):
            for side in (("ort", "diffusers") if r % 2 == 0 else ("diffusers", "ort")):
                kind = "ort_wan_decode" if side == "ort" else "diffusers_wan_decode"
                res = run_worker(kind, model=str(work / "wan_onnx"), latents=str(latents),
                                 out=str(work / f"{tag}_{side}_{r}.f32"), latent_chunk=args.latent_chunk,
                                 **wan)
                log(f"  {tag} round {r + 1} {side:9s}: {res['seconds']:.1f} s for {res['frames']} frames, "
                    f"peak RSS {res['peak_rss_mb']:.0f} MB")
                runs[side].append(res)
        summary = ratio_summary([x["seconds"] for x in runs["ort"]],
                                [x["seconds"] for x in runs["diffusers"]])
        summary.update(frames=runs["ort"][0]["frames"], latent_frames=t_lat, size=size, runs=runs,
                       max_abs=max_abs(work / f"{tag}_ort_0.f32", work / f"{tag}_diffusers_0.f32"),
                       ort_peak_rss_mb=max(x["peak_rss_mb"] for x in runs["ort"]),
                       diffusers_peak_rss_mb=max(x["peak_rss_mb"] for x in runs["diffusers"]))
        log(f"  {tag}: diffusers / ORT = {summary['ratio']:.2f}x, max abs {summary['max_abs']:.2e}")
        return summary

    log(f"Wan decode, 17 frames at {args.size}x{args.size}, {args.rounds} alternating rounds")
    result["wan_decode_17"] = wan_pair(17, args.size, args.rounds, "dec17")
    log(f"Wan decode, 65 frames at {rss_size}x{rss_size} (memory pair)")
    result["wan_decode_65"] = wan_pair(65, rss_size, 1, "dec65")
    if rss_size != args.size:
        log(f"Wan decode, 17 frames at {rss_size}x{rss_size} (memory pair at the 65-frame size)")
        result["wan_decode_17_rss"] = wan_pair(17, rss_size, 1, "dec17rss")

    if not args.no_encode:
        log(f"Wan encode, 17 frames of the packaged clip at {args.size}x{args.size}")
        video = work / "clip17.npy"
        np.save(video, read_clip(17, args.size))
        runs = {}
        for side in ("diffusers", "ort"):  # the 17-frame decode rounds ended with ORT when rounds is even
            kind = "ort_wan_encode" if side == "ort" else "diffusers_wan_encode"
            runs[side] = run_worker(kind, model=str(work / "wan_onnx"), video=str(video),
                                    out=str(work / f"enc_{side}.f32"), **wan)
            log(f"  encode {side:9s}: {runs[side]['seconds']:.1f} s, "
                f"peak RSS {runs[side]['peak_rss_mb']:.0f} MB")
        enc = ratio_summary([runs["ort"]["seconds"]], [runs["diffusers"]["seconds"]])
        enc.update(frames=17, size=args.size, runs=runs,
                   max_abs=max_abs(work / "enc_ort.f32", work / "enc_diffusers.f32"))
        result["wan_encode_17"] = enc
        log(f"  encode: diffusers / ORT = {enc['ratio']:.2f}x, mu max abs {enc['max_abs']:.2e}")

    if not args.no_kl:
        kl = {"class": "AutoencoderKL", "folder": str(work / "kl_diffusers"), "threads": threads}
        log("SD AutoencoderKL: build, save_pretrained, export with vae-deploy")
        result["kl_export"] = run_worker("build_and_export", seed=0, config=kl_cfg, reuse=args.reuse,
                                         model=str(work / "kl_onnx"),
                                         **{k: kl[k] for k in ("class", "folder")})
        log(f"  {exported(result['kl_export'])}")
        h = args.kl_size // 8
        latents = work / "z_kl.npy"
        channels = result["kl_export"]["config"]["latent_channels"]
        np.save(latents, rng.standard_normal((args.kl_frames, channels, h, h), dtype=np.float32))
        runs = {"ort": [], "diffusers": []}
        for r in range(args.rounds):
            for side in (("ort", "diffusers") if r % 2 == 0 else ("diffusers", "ort")):
                kind = "ort_kl_decode" if side == "ort" else "diffusers_kl_decode"
                res = run_worker(kind, model=str(work / "kl_onnx"), latents=str(latents),
                                 out=str(work / f"kl_{side}_{r}.f32"), **kl)
                log(f"  SD round {r + 1} {side:9s}: per frame "
                    + ", ".join(f"{s:.2f}" for s in res["seconds_per_frame"]) + " s")
                runs[side].append(res)
        per = {side: [float(np.median(x["seconds_per_frame"])) for x in runs[side]] for side in runs}
        summary = ratio_summary(per["ort"], per["diffusers"])
        summary.update(size=args.kl_size, frames_per_process=args.kl_frames, runs=runs,
                       max_abs=max_abs(work / "kl_ort_0.f32", work / "kl_diffusers_0.f32"))
        result["kl_decode"] = summary
        log(f"  SD decode: diffusers / ORT = {summary['ratio']:.2f}x per frame, "
            f"max abs {summary['max_abs']:.2e}")

    result["loadavg_after"] = os.getloadavg()
    result["seconds"] = time.time() - started
    return result


# ---------------------------------------------------------------- the markdown
def render(r: dict) -> str:
    m = r["machine"]
    simd = ", ".join(m.get("simd_flags", [])) or "none listed"
    amx = any(f.startswith("amx") for f in m.get("simd_flags", []))
    v = r["versions"]
    lines = [
        "# Exported diffusers VAEs: ONNX Runtime CPU vs diffusers eager PyTorch",
        "",
        f"Command: `{r['command']}` ({r['seconds'] / 60:.1f} min; benchmarks/external_vae_speed.py)."
        + (" **--quick: tiny models, not a measurement.**" if r["quick"] else ""),
        f"Machine: {m['cpus']} CPUs ({m.get('cpu_model', '?')}; SIMD flags in /proc/cpuinfo: {simd}; "
        f"{'AMX present' if amx else 'no AMX'}), {m['memory']} memory, {m['platform']}. Load average "
        f"{r['loadavg_before'][0]:.1f} before / {r['loadavg_after'][0]:.1f} after: the machine was shared "
        "with other jobs, so absolute times are noisy; the sides alternate to share the noise.",
        f"torch {v['torch']}, diffusers {v['diffusers']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}. "
        f"{r['threads']} threads on both sides (torch.set_num_threads; ort-cpu runner "
        f"threads={r['threads']}).",
        "",
        "Models: random weights (seeded), `save_pretrained`, exported with vae-deploy's own "
        "`export_job(folder, out, real=0)`.",
    ]
    we = r["wan_export"]
    cfg = we["config"]
    what = "the tiny test config" if r["quick"] else "`AutoencoderKLWan()` class defaults = Wan 2.1 widths"
    lines.append(f"- Wan: {what} (base_dim {cfg['base_dim']}, z_dim {cfg['z_dim']}, dim_mult "
                 f"{cfg['dim_mult']}, num_res_blocks {cfg['num_res_blocks']}, temperal_downsample "
                 f"{cfg['temperal_downsample']}), {we['params'] / 1e6:.1f} M parameters; {exported(we)}.")
    if "kl_export" in r:
        ke = r["kl_export"]
        cfg = ke["config"]
        what = "the tiny test config" if r["quick"] else (
            "the SD 1.x VAE config (diffusers' class defaults are a one-block (64,) toy, not SD)")
        lines.append(f"- SD: `AutoencoderKL` with {what}: block_out_channels {cfg['block_out_channels']}, "
                     f"layers_per_block {cfg['layers_per_block']}, latent_channels {cfg['latent_channels']}, "
                     f"norm_num_groups {cfg['norm_num_groups']}, {ke['params'] / 1e6:.1f} M parameters; "
                     f"{exported(ke)}.")

    lines += ["", "## Speed (seconds of the decode/encode call; model loading apart)", "",
              "| case | frames | size | ORT-CPU s | diffusers s | ORT frames/s | diffusers frames/s | "
              "diffusers / ORT | per round | max abs (outputs) |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]

    def row(name: str, c: dict, frames: int, unit: str = "") -> None:
        o, d = c["ort_median_s"], c["diffusers_median_s"]
        rounds = ", ".join(f"{x:.2f}" for x in c["ratio_per_round"])
        lines.append(f"| {name} | {frames}{unit} | {c['size']}x{c['size']} | {o:.2f} | {d:.2f} | "
                     f"{frames / o:.2f} | {frames / d:.2f} | **{c['ratio']:.2f}x** | {rounds} | "
                     f"{c['max_abs']:.1e} |")

    for key, name in (("wan_decode_17", "Wan decode, streamed (ORT) vs vae.decode"),
                      ("wan_decode_65", "Wan decode, 65-frame memory pair"),
                      ("wan_decode_17_rss", "Wan decode, 17 frames at the memory-pair size"),
                      ("wan_encode_17", "Wan encode (mu), streamed vs vae.encode")):
        if key in r:
            row(name, r[key], r[key]["frames"])
    if "kl_decode" in r:
        row("SD decode, one frame per call (s per frame)", r["kl_decode"], 1)
    main17 = r["wan_decode_17"]
    lines += ["",
              "Medians over rounds; each run is its own process, the sides alternating "
              f"({len(main17['ort_s'])} round(s) for the first row and the SD row, one pair for the others). "
              "diffusers / ORT above 1 means ORT is faster; issue floor >= 1.0 for the Wan decode: "
              f"**{'met' if main17['ratio'] >= 1 else 'NOT met'}** ({main17['ratio']:.2f}x).",
              "Max abs: ORT output against diffusers' output of the same latents (decoded frames in [0, 1]; "
              "encoder means for the encode row).",
              f"ORT decode steps: the first {1 + r['latent_chunk']} latent frames, then "
              f"{r['latent_chunk']} per `stream.step(\"decoder\", ...)` (as `vae-deploy run --chunk 4`)"
              "; each step's frames are written to disk as they come. Latents: seeded standard normal, raw "
              "(diffusers' latent space before normalization), the same array for both sides.", ""]

    lines += ["## Peak RSS (ru_maxrss of each process, MB)", "",
              "| case | latent frames | frames | size | ORT-CPU stream | diffusers vae.decode |",
              "|---|---:|---:|---|---:|---:|"]
    pairs = [(k, r[k]) for k in ("wan_decode_17", "wan_decode_17_rss", "wan_decode_65") if k in r]
    for key, c in pairs:
        lines.append(f"| {key} | {c['latent_frames']} | {c['frames']} | {c['size']}x{c['size']} | "
                     f"{c['ort_peak_rss_mb']:.0f} | {c['diffusers_peak_rss_mb']:.0f} |")
    short = r.get("wan_decode_17_rss") or r["wan_decode_17"]
    long = r["wan_decode_65"]
    g_ort = long["ort_peak_rss_mb"] / short["ort_peak_rss_mb"] - 1
    g_ref = long["diffusers_peak_rss_mb"] / short["diffusers_peak_rss_mb"] - 1
    loaded = long["runs"]["ort"][0]["rss_after_load_mb"], long["runs"]["diffusers"][0]["rss_after_load_mb"]
    lines += ["",
              f"Growth from 17 to 65 frames at {long['size']}x{long['size']}: ORT stream **{g_ort:+.1%}** "
              f"(floor < 10%: **{'met' if g_ort < 0.10 else 'NOT met'}**), diffusers {g_ref:+.1%}.",
              f"Absolute peaks: ORT's is {main17['ort_peak_rss_mb'] / main17['diffusers_peak_rss_mb']:.2f}x "
              f"diffusers' at 17 frames {main17['size']}x{main17['size']} and "
              f"{long['ort_peak_rss_mb'] / long['diffusers_peak_rss_mb']:.2f}x at 65 frames "
              f"{long['size']}x{long['size']}: the stream's peak does not grow with the clip, but it starts "
              "higher.",
              f"After loading the model, before decoding: ORT {loaded[0]:.0f} MB (all four graphs' sessions; "
              f"the process never imports torch), diffusers {loaded[1]:.0f} MB (torch + the whole model).",
              "Each number is its own fresh process, so neither side's allocations raise the other's peak."]
    if "wan_decode_17_rss" in r:
        lines.append(f"The memory pair runs at {long['size']}x{long['size']}, not "
                     f"{r['wan_decode_17']['size']}: the 65-frame diffusers decode at the speed size would "
                     "not fit the time of one run on this shared machine.")
    if "kl_decode" in r:
        k = r["kl_decode"]
        lines += ["", f"SD: {k['frames_per_process']} latents decoded one frame per call in each process; "
                  f"the row is the median seconds per frame. Peak RSS: ORT "
                  f"{max(x['peak_rss_mb'] for x in k['runs']['ort']):.0f} MB, diffusers "
                  f"{max(x['peak_rss_mb'] for x in k['runs']['diffusers']):.0f} MB."]
    if r.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in r["notes"])]
    lines += ["", "Raw numbers (every run's seconds, load time, RSS): external_vae_speed.json."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
