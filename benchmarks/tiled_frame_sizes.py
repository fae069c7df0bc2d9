"""Wan 2.1-width video VAE at real frame sizes: vae-deploy untiled and tiled (ORT-CPU) against diffusers
untiled and diffusers `enable_tiling()` at the same tile size: seconds, peak RSS, and how far each tiled
output is from its untiled one.

    .venv/bin/python benchmarks/tiled_frame_sizes.py [--sizes 832x480] [--tile 256] [--limit-gb 20]
    .venv/bin/python benchmarks/tiled_frame_sizes.py --quick     # tiny model, small frames: a smoke run

Model: `AutoencoderKLWan()` with diffusers' class defaults (the published Wan 2.1 VAE's widths), random
weights from a fixed seed, `save_pretrained`, exported with vae-deploy's own `export_job` (real=0). Inputs: 5
frames of the packaged clip resized to each size (the first chunk and one steady step: 1 + 4 frames, 2
latent frames); decode takes the latents vae-deploy's untiled encode gave.

Every case runs in its own fresh process under a memory limit (--limit-gb): a cgroup v1 memory limit on its
resident memory where the machine has the controller (the kernel kills a case that exceeds it), else an
address-space limit (RLIMIT_AS, which also counts memory reserved but never touched). A case that does not
fit is reported as "did not fit", it never takes the machine down. Both sides use --threads
threads. vae-deploy streams: the first chunk (1 frame / 1 latent frame), then one step of 4 frames / 1
latent frame, as `vae-deploy run` does; diffusers is given the whole 5-frame clip (it walks it the same way
internally). Tiled vae-deploy uses `TiledStream` with `--tile` (exact: Wan's graphs split at latent
resolution); diffusers `enable_tiling()` with tiles of --tile px and a stride of 3/4 of it (its defaults:
256 and 192), which blends.

Writes benchmarks/results/tiled_frame_sizes.{json,md} (--quick: under the work folder).
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
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
WAN_TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
            "latents_std": [1.5, 2.0, 0.5, 1.0]}
FRAMES = 5  # 1 + 4: the first chunk and one steady step
CASES = ("ours", "ours_tiled", "diffusers", "diffusers_tiled")


# ---------------------------------------------------------------- in a worker process
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_and_export(task: dict) -> dict:
    import diffusers
    import torch

    from vae_deploy.export.jobs import export_job

    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(**task["config"])
    model.save_pretrained(task["folder"])
    params = sum(p.numel() for p in model.parameters())
    del model
    started = time.perf_counter()
    result = export_job(Path(task["folder"]), Path(task["model"]), real=0, force=True,
                        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    manifest = json.loads((Path(task["model"]) / "manifest.json").read_text())
    return {"export_s": time.perf_counter() - started, "parity_passed": bool(result.report.passed),
            "params": params, "tiling": {g: manifest["tiling"][g] for g in ("encoder", "decoder")}}


def ours(task: dict) -> dict:
    from vae_deploy.runtime import load_runner
    from vae_deploy.runtime.tile_plan import TilePlanner, TileRequest
    from vae_deploy.runtime.tiled_stream import TiledStream

    data = np.load(task["input"])
    with load_runner(task["model"], "ort-cpu", threads=task["threads"]) as runner:
        tile = task["tile"] if task["case"] == "ours_tiled" else "off"
        stream = TiledStream(runner, TilePlanner(runner.manifest, TileRequest(tile)))
        started = time.perf_counter()
        if task["graph"] == "encoder":
            out = [stream.encode(data[:, :1])[0], stream.encode(data[:, 1:])[0]]
        else:
            out = [stream.decode(data[:, :1]), stream.decode(data[:, 1:])]
        seconds = time.perf_counter() - started
        tiles = stream.tiles(task["graph"])
    np.save(task["out"], np.concatenate(out, axis=1))
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tiles": 0 if tiles is None else tiles.count}


def theirs(task: dict) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(task["threads"])
    vae = diffusers.AutoencoderKLWan.from_pretrained(task["folder"]).eval()
    if task["case"] == "diffusers_tiled":
        # diffusers' default stride is 3/4 of its default tile (192 of 256): the same share here
        stride = task["tile"] * 3 // 4 // 8 * 8
        vae.enable_tiling(tile_sample_min_height=task["tile"], tile_sample_min_width=task["tile"],
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    data = torch.from_numpy(np.load(task["input"])).permute(0, 2, 1, 3, 4).contiguous()  # NCTHW
    with torch.no_grad():
        started = time.perf_counter()
        if task["graph"] == "encoder":
            out = vae.encode(data * 2 - 1).latent_dist.mean
        else:
            out = (vae.decode(data).sample + 1) / 2
        seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    np.save(task["out"], out.permute(0, 2, 1, 3, 4).numpy())
    return {"seconds": seconds, "peak_rss_mb": peak}


CGROUP = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller, where the machine has one


def memory_cgroup(name: str, limit_gb: float) -> Path | None:
    """A memory cgroup of `limit_gb` for one case (resident memory, what the kernel's OOM killer enforces),
    or None where there is none to make (then the worker limits its address space instead)."""
    path = CGROUP / name
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
        (path / "memory.max_usage_in_bytes").write_text("0")
    except OSError:
        return None
    return path


def worker(task: dict) -> dict:
    if task.get("limit_gb") and not task.get("cgroup"):
        limit = int(task["limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a case that does not fit fails alone
    if task["kind"] == "export":
        return build_and_export(task)
    return ours(task) if task["case"].startswith("ours") else theirs(task)


# ---------------------------------------------------------------- the orchestrating process
def run(task: dict) -> dict:
    started = time.time()
    group = memory_cgroup(f"tiled_frame_sizes_{os.getpid()}", task["limit_gb"]) if task.get("limit_gb") \
        else None
    task = {**task, "cgroup": str(group) if group else ""}

    def join_group() -> None:  # in the child, before it starts: it and all it allocates count
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True,
                              text=True, cwd=REPO, preexec_fn=join_group)
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20 if group else None
    finally:
        if group is not None:
            group.rmdir()  # the case's own group, empty once its process ended
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        signs = ("MemoryError", "bad_alloc", "Failed to allocate", "Cannot allocate memory")
        memory = any(sign in proc.stderr for sign in signs) or proc.returncode in (-9, 137)
        return {"failed": "did not fit" if memory else "failed", "error": tail[0][-300:],
                "wall_s": time.time() - started}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.time() - started
    if peak is not None:
        result["cgroup_peak_mb"] = peak  # resident memory and page cache the case's group held at most
    return result


def clip(width: int, height: int) -> np.ndarray:
    """FRAMES frames of the packaged clip resized to width x height: (1, T, 3, H, W) float32 in [0, 1]."""
    import cv2

    from vae_deploy.video.samples import sample_video_path
    from vae_deploy.video.sources import open_source

    with open_source(sample_video_path("carphone_pristine")) as source:
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(FRAMES), source, strict=False)]
    return (np.stack(frames).transpose(0, 3, 1, 2)[None] / 255.0).astype(np.float32)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    err = np.abs(a.astype(np.float64) - b)
    return {"max_abs": float(err.max()), "psnr_db": float(10 * np.log10(1 / max(np.mean(err ** 2), 1e-20)))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--sizes", default="832x480")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=20.0)
    parser.add_argument("--graphs", default="decoder,encoder")
    parser.add_argument("--work", default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse the export in --work")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="tiled_sizes_"))
    work.mkdir(parents=True, exist_ok=True)
    config = WAN_TINY if args.quick else {}
    sizes = ["160x128"] if args.quick else args.sizes.split(",")
    tile = 80 if args.quick else args.tile
    out = Path(args.out) if args.out else (work / "tiled_frame_sizes" if args.quick else
                                           RESULTS / "tiled_frame_sizes")
    limit_kind = "cgroup v1 memory.limit_in_bytes" if CGROUP.is_dir() else "RLIMIT_AS"
    meta = {"limit_kind": limit_kind,
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "cpus": os.cpu_count(),
            "platform": platform.platform(), "load_before": os.getloadavg()[0], "threads": args.threads,
            "tile": tile, "limit_gb": args.limit_gb, "frames": FRAMES}
    folder, model = work / "diffusers", work / "model"
    if args.reuse and (model / "manifest.json").is_file():
        meta["export"] = {"reused": str(model)}
    else:
        print("exporting", flush=True)
        meta["export"] = run({"kind": "export", "config": config, "folder": str(folder), "model": str(model)})
    rows = []
    for size in sizes:
        width, height = (int(v) for v in size.split("x"))
        video = work / f"video_{size}.npy"
        np.save(video, clip(width, height))
        inputs = {"encoder": video}
        for graph in args.graphs.split(","):
            if graph == "decoder":  # the latents vae-deploy's untiled encode gave (the encoder runs first)
                latents = work / f"encoder_{size}_ours.npy"
                if not latents.is_file():
                    run({"kind": "case", "case": "ours", "graph": "encoder", "input": str(video),
                         "out": str(latents), "model": str(model), "folder": str(folder), "tile": tile,
                         "threads": args.threads, "limit_gb": args.limit_gb})
                inputs["decoder"] = latents
            results = {}
            for case in CASES:
                print(f"{graph} {size} {case}", flush=True)
                output = work / f"{graph}_{size}_{case}.npy"
                results[case] = run({"kind": "case", "case": case, "graph": graph,
                                     "input": str(inputs[graph]), "out": str(output), "model": str(model),
                                     "folder": str(folder), "tile": tile, "threads": args.threads,
                                     "limit_gb": args.limit_gb})
                if "failed" not in results[case]:
                    results[case]["output"] = str(output)
            pairs = (("ours_tiled", "ours"), ("diffusers_tiled", "diffusers"), ("ours", "diffusers"))
            for case, whole in pairs:
                if "output" in results[case] and "output" in results[whole]:
                    results[case][f"vs_{whole}"] = compare(np.load(results[case]["output"]),
                                                           np.load(results[whole]["output"]))
            rows.append({"graph": graph, "size": size, "results": results})
            print(json.dumps(rows[-1]), flush=True)
    meta["load_after"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {out.with_suffix('.md')}")


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = ["# Wan 2.1 widths at real frame sizes: vae-deploy untiled and tiled vs diffusers", "",
             f"Command: `{meta['command']}`. {meta['cpus']} CPUs, {meta['platform']}; load average "
             f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after. {meta['threads']} threads "
             f"on both sides. Tile {meta['tile']} px on both sides. {meta['frames']} frames (first chunk + "
             f"one steady step). Each case its own process under a {meta['limit_gb']} GB memory limit "
             f"({meta.get('limit_kind', 'address space')}).", "",
             f"Export: {json.dumps(meta['export'])[:600]}", "",
             "| graph | size | case | seconds | peak RSS MB | tiles | vs untiled (same side): max abs "
             "| PSNR dB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    notes = ["", "PSNR 200.0 stands for identical outputs (max abs 0). Seconds: the encode/decode calls "
             "only, loading apart. Peak RSS: ru_maxrss of the case's process."]
    for row in rows:
        for case, r in row["results"].items():
            if "failed" in r:
                lines.append(f"| {row['graph']} | {row['size']} | {case} | {r['failed']} at "
                             f"{meta['limit_gb']} GB ({r['error'][:80]}) | | | | |")
                continue
            versus = (r.get("vs_ours") or r.get("vs_diffusers")) if case.endswith("tiled") else None
            error = "" if not versus else "{max_abs:.2e} | {psnr_db:.1f}".format(**versus)
            lines.append(f"| {row['graph']} | {row['size']} | {case} | {r['seconds']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} | {r.get('tiles', '')} | {error or ' | '} |")
        ours_vs = row["results"].get("ours", {}).get("vs_diffusers")
        if ours_vs:
            lines.append(f"| {row['graph']} | {row['size']} | ours untiled vs diffusers untiled | | | | "
                         f"{ours_vs['max_abs']:.2e} | {ours_vs['psnr_db']:.1f} |")
    return "\n".join(lines + notes) + "\n"


if __name__ == "__main__":
    main()
