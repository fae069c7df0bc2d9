"""One copy of the weights (issue 24 item 1): bytes on disk and peak resident memory of a Wan model folder
with each graph holding its own weights, against one shared weights.bin, loaded two ways.

    .venv/bin/python benchmarks/shared_weights.py --model MODEL_DIR [--size 64] [--rounds 2]

MODEL_DIR is a folder `vae-deploy export` wrote for a model with first-chunk graphs (AutoencoderKLWan; the
recorded run used `AutoencoderKLWan()`, diffusers' class defaults = the Wan 2.1 widths, random weights
from torch.manual_seed(0), saved with save_pretrained and exported with `export_job(..., real=0)`).
From it the script makes two folders under --work, the manifest's hashes recomputed for each:
- inline:  every graph with its weights inline (the folder as export wrote it before weights.bin),
- shared:  the graphs' tensors in one weights.bin, each distinct tensor once (export/shared_weights.py).
Cases, each in its OWN fresh process (so one case's allocations never raise another's peak RSS), the cases
alternating round by round:
- inline                       the inline folder, sessions as ort-cpu builds them,
- shared, session buffers      the shared folder, every session reading its tensors into its own buffers
                               (runtime/shared_initializers.ENABLED = False),
- shared, one buffer           the shared folder, one read-only mapping of weights.bin whose tensors every
                               session gets with SessionOptions.add_initializer (the default).
Each process loads the ort-cpu runner (2 threads) and streams a clip of 9 frames (1 + 4 + 4) of --size x
--size through the encoder and 3 latent frames through the decoder (first chunk, then steady steps), as
`vae-deploy run` does. Reported: peak RSS after loading and after streaming (VmHWM), the resident memory
while the runner is still open after the last step (VmRSS, split into file-backed and anonymous pages, and
PSS), load and stream seconds, and that every case's outputs are equal.
Writes benchmarks/results/shared_weights.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
CASES = {"inline": ("inline", False), "shared, session buffers": ("shared", False),
         "shared, one buffer": ("shared", True)}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, not ru_maxrss, which Linux carries over from the parent
    through fork and exec (a worker would report the parent's peak, here the one of making the folders)."""
    return _status_mb("VmHWM")


def memory_now() -> dict:
    """Resident memory now, in MB: VmRSS, its file-backed part (mapped weights) and its anonymous part
    (arena, activations, copies), and PSS, which counts a page mapped twice (two sessions mapping the same
    file each) once."""
    pss = float("nan")
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return {"rss_mb": _status_mb("VmRSS"), "rss_file_mb": _status_mb("RssFile"),
            "rss_anon_mb": _status_mb("RssAnon"), "pss_mb": pss}


def worker(task: dict) -> dict:
    """One case in this fresh process: load the runner, stream the clip, report memory and time."""
    from vae_deploy.runtime import load_runner, shared_initializers

    shared_initializers.ENABLED = task["share"]
    rng = np.random.default_rng(0)
    size = task["size"]
    video = rng.random((1, 9, 3, size, size), dtype=np.float32)
    started = time.perf_counter()
    with load_runner(task["model"], "ort-cpu", threads=task["threads"]) as runner:
        load_s = time.perf_counter() - started
        loaded_peak = peak_rss_mb()
        shared = sum(len(getattr(s, "_vae_deploy_weights", [])) for s in runner._sessions.values())
        t = time.perf_counter()
        stream = runner.open_stream()
        mus = [stream.step("encoder", video[:, a:b])["mu"] for a, b in ((0, 5), (5, 9))]
        z = np.concatenate(mus, axis=1)
        stream = runner.open_stream()
        frames = [stream.step("decoder", z[:, a:b])["video"] for a, b in ((0, 2), (2, 3))]
        seconds = time.perf_counter() - t
        streaming = memory_now()  # the runner still open: what a process holds while it streams
        out = np.concatenate([m.ravel() for m in mus] + [f.ravel() for f in frames])
    np.save(task["out"], out)
    return {"load_s": load_s, "stream_s": seconds, "peak_rss_after_load_mb": loaded_peak,
            "peak_rss_mb": peak_rss_mb(), "after_stream": streaming, "sessions_sharing": shared}


def run_worker(task: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"worker failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> dict:
    from vae_deploy.runtime.manifest import read_manifest

    manifest = read_manifest(folder, check_files=False)
    graphs = {g.file: (folder / g.file).stat().st_size for g in manifest.graphs.values()}
    weights = (folder / "weights.bin").stat().st_size if (folder / "weights.bin").is_file() else 0
    reference = sum(p.stat().st_size for p in (folder / "reference").rglob("*") if p.is_file())
    return {"graphs": graphs, "weights_bin": weights, "onnx_total": sum(graphs.values()) + weights,
            "reference": reference, "folder": folder_total(folder)}


def folder_total(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fp32_weight_bytes(folder: Path) -> int:
    """The bytes of the model's parameters in fp32, from the reference checkpoint's safetensors header."""
    path = folder / "reference" / "model.safetensors"
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
    return sum(int(np.prod(v["shape"])) * 4 for k, v in header.items()
               if k != "__metadata__" and v["dtype"] in sizes)


def make_variants(model: Path, work: Path) -> dict[str, Path]:
    """The inline and the shared folder (copies of `model`), each with its manifest rehashed."""
    import onnx

    from vae_deploy.export.shared_weights import WEIGHTS_FILE, share_weights
    from vae_deploy.runtime.manifest import hash_files, read_manifest, write_manifest

    folders = {}
    for name in ("inline", "shared"):
        folder = work / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(model, folder, ignore=shutil.ignore_patterns("engines"))
        manifest = read_manifest(folder)
        graph_files = [g.file for g in manifest.graphs.values()]
        for file in graph_files:  # inline first, whatever the export wrote
            onnx.save(onnx.load(str(folder / file)), str(folder / file))
        (folder / WEIGHTS_FILE).unlink(missing_ok=True)
        files = [f for f in manifest.files if f != WEIGHTS_FILE]
        if name == "shared":
            share_weights(folder, graph_files)
            files.append(WEIGHTS_FILE)
        manifest.files = hash_files(folder, files)
        write_manifest(folder, manifest)
        read_manifest(folder)  # every hash checks
        folders[name] = folder
    return folders


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "onnxruntime": version("onnxruntime"),
            "onnx": version("onnx"), "cpus": os.cpu_count(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vae-deploy-shared-weights"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_weights")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.model is None:
        parser.error("--model MODEL_DIR is required")
    args.work.mkdir(parents=True, exist_ok=True)
    folders = make_variants(args.model, args.work)
    disk = {name: folder_bytes(folder) for name, folder in folders.items()}
    from vae_deploy.export.slim import slim_folder

    slim_folder(folders["shared"], args.work / "device", force=True)  # the folder for a device
    device = {"folder": folder_total(args.work / "device"),
              "golden": (args.work / "device" / "golden.npz").stat().st_size}
    fp32 = fp32_weight_bytes(folders["inline"])
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for case, (variant, share) in CASES.items():
            task = {"model": str(folders[variant]), "share": share, "size": args.size,
                    "threads": args.threads, "out": str(args.work / f"out_{variant}_{share}.npy")}
            runs[case].append(run_worker(task))
            print(f"round {r + 1} {case}: {runs[case][-1]}", file=sys.stderr, flush=True)
    outputs = {case: np.load(args.work / f"out_{v}_{s}.npy") for case, (v, s) in CASES.items()}
    base = outputs["inline"]
    result = {"model": str(args.model), "size": args.size, "threads": args.threads, "rounds": args.rounds,
              "fp32_weight_bytes": fp32, "disk": disk, "device_folder": device,
              "onnx_over_fp32": {n: d["onnx_total"] / fp32 for n, d in disk.items()},
              "max_abs_vs_inline": {c: float(np.abs(o - base).max()) for c, o in outputs.items()},
              "runs": runs, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    mb = 1e6
    lines = [
        "# One copy of the weights: bytes on disk and resident memory (benchmarks/shared_weights.py)",
        "",
        f"Model folder: `{r['model']}`; fp32 parameter bytes {r['fp32_weight_bytes'] / mb:.1f} MB. "
        f"ORT-CPU {r['machine']['onnxruntime']}, {r['threads']} threads, {r['machine']['cpus']} CPUs. "
        f"Each case in its own process, {r['rounds']} rounds alternating; a clip of 9 frames of "
        f"{r['size']}x{r['size']} encoded (5 + 4) and its 3 latent frames decoded (2 + 1).",
        "",
        "| folder | graphs (MB) | weights.bin (MB) | ONNX total (MB) | / fp32 weights |",
        "|---|---|---|---|---|",
    ]
    for name, d in r["disk"].items():
        lines.append(f"| {name} | {sum(d['graphs'].values()) / mb:.1f} | {d['weights_bin'] / mb:.1f} | "
                     f"{d['onnx_total'] / mb:.1f} | {r['onnx_over_fp32'][name]:.3f}x |")
    lines += ["", f"Whole folders: {r['disk']['inline']['folder'] / mb:.1f} MB with a copy of the weights "
              f"per graph, {r['disk']['shared']['folder'] / mb:.1f} MB with weights.bin, "
              f"{r['device_folder']['folder'] / mb:.1f} MB after `vae-deploy slim` (no reference/, "
              f"{r['disk']['inline']['reference'] / mb:.1f} MB; golden.npz "
              f"{r['device_folder']['golden'] / mb:.1f} MB stays, for a torch-free `verify`).", "",
              "| case | peak RSS after load | peak RSS | RSS streaming (file + anon) | PSS streaming "
              "| load (s) | stream (s) | max abs vs inline |", "|---|---|---|---|---|---|---|---|"]
    for case, runs in r["runs"].items():
        def med(key, runs=runs):
            return float(np.median([x[key] for x in runs]))

        def now(key, runs=runs):
            return float(np.median([x["after_stream"][key] for x in runs]))
        lines.append(f"| {case} | {med('peak_rss_after_load_mb'):.0f} | {med('peak_rss_mb'):.0f} | "
                     f"{now('rss_mb'):.0f} ({now('rss_file_mb'):.0f} + {now('rss_anon_mb'):.0f}) | "
                     f"{now('pss_mb'):.0f} | {med('load_s'):.2f} | {med('stream_s'):.2f} | "
                     f"{r['max_abs_vs_inline'][case]:.1e} |")
    lines += ["", "Memory in MB (VmHWM for the peaks; VmRSS, RssFile, RssAnon and PSS with the runner still "
              "open after the last step). Medians over the rounds; every round is in the .json.", ""]
    peak = {case: float(np.median([x["peak_rss_mb"] for x in runs])) for case, runs in r["runs"].items()}
    pss = {case: float(np.median([x["after_stream"]["pss_mb"] for x in runs]))
           for case, runs in r["runs"].items()}
    one, own, inline = peak["shared, one buffer"], peak["shared, session buffers"], peak["inline"]
    anon = float(np.median([x["after_stream"]["rss_anon_mb"] for x in r["runs"]["shared, one buffer"]]))
    lines += [
        f"Reading: on disk, weights.bin holds each tensor once ({r['onnx_over_fp32']['shared']:.3f}x "
        f"the fp32 weights, against {r['onnx_over_fp32']['inline']:.3f}x inline). In memory, ONNX "
        f"Runtime maps the external data of each session from the file itself, so with weights.bin "
        f"alone the physical memory already holds one copy (PSS {pss['shared, session buffers']:.0f} MB "
        f"against {pss['inline']:.0f} MB inline), but every session maps it again and resident memory "
        f"counts each mapping (RSS, what ps, ru_maxrss and the OOM killer's score read): peak {own:.0f} "
        f"MB. One shared OrtValue per tensor (SessionOptions.add_initializer on one read-only mapping) "
        f"is one mapping: peak RSS {one:.0f} MB, {100 * (1 - one / inline):.0f}% under inline and "
        f"{100 * (1 - one / own):.0f}% under the sessions' own mappings, at equal PSS, equal speed and "
        f"identical outputs. The default is the shared OrtValues (runtime/shared_initializers.py). The "
        f"anonymous part left (about {anon:.0f} MB) is ONNX Runtime's arena and activations: issue 24 "
        f"item 2."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
