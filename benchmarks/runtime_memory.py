"""Where the ort-cpu stream's peak memory goes, and what the memory options cost in speed (issue 24 item 2).

    .venv/bin/python benchmarks/runtime_memory.py --model M --diffusers D [--size 256x256] [--cases ...]
    .venv/bin/python benchmarks/runtime_memory.py --quick     # the tiny Wan test config: a smoke run

M is a model folder `vae-deploy export` wrote from the diffusers folder D (AutoencoderKLWan); --quick builds
and exports the tiny Wan 2.1 config of tests/external_zoo.py into the temp folder instead.

Each case is its own fresh process (so no case's allocations raise another's peak), started under a memory
limit (RLIMIT_AS, --limit-gb): a case that does not fit reports "did not fit", it never takes the machine
down. Its peak RSS is the child's ru_maxrss read by os.wait4, which also covers a child that died.
The work is the same in every case: seeded raw latents of --latent-frames frames at --size decoded as
`vae-deploy decode` does with the default --chunk 8 (the first 1 + 2 latent frames, then 2 per step), each
step's frames written to a file as they come. The ORT cases differ only in runner options (runtime/
ort_runner.py, ort_session.py); `diffusers` is diffusers' own eager `vae.decode` of the same latents (it
returns the whole clip; its peak is read before the output is converted).

Cases (ORT): `before` is the old defaults (ORT's arena and memory patterns on, prepacking on, glibc's own
malloc thresholds, the whole chunk in one call, state returned as numpy and fed back); the single-option
cases change one thing from `before`; `after` is the new defaults (no options given,
runtime/cpu_memory.py). --threads (2) on every side; --thread-cases adds `after` at 1 thread and at all CPUs.
Writes benchmarks/results/runtime_memory.{json,md} (--quick: into the temp folder unless --out).
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
OLD_DEFAULTS = {"arena": True, "mem_pattern": True, "prepacking": True, "bind_state": False, "call_steps": 0,
                "mmap_threshold": 0}  # ORT's and glibc's own, the whole chunk per call, state as numpy
# name -> runner options (None: diffusers' eager decode); each single-option case changes one old default
ORT_CASES: dict[str, dict | None] = {
    "before": dict(OLD_DEFAULTS),
    "no_arena": {**OLD_DEFAULTS, "arena": False},
    "shrink_arena": {**OLD_DEFAULTS, "shrink_arena": True},
    "no_mem_pattern": {**OLD_DEFAULTS, "mem_pattern": False},
    "mmap_threshold": {**OLD_DEFAULTS, "mmap_threshold": 1 << 20},
    "call_steps": {**OLD_DEFAULTS, "call_steps": 1},
    "bind_state": {**OLD_DEFAULTS, "bind_state": True},
    "no_prepacking": {**OLD_DEFAULTS, "prepacking": False},
    "after": {},
    "after_whole_chunk": {"call_steps": 0},
    "after_numpy_state": {"bind_state": False},
    "diffusers": None,
}
WAN_TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
            "latents_std": [1.5, 2.0, 0.5, 1.0]}  # tests/external_zoo.py's "wan2.1"


# ---------------------------------------------------------------- one case, in its own process
def step_bounds(latent_frames: int, chunk: int = 2, first: int = 1) -> list[int]:
    """Latent frame bounds of each decode step: the first step holds `first` more (Wan's first rule)."""
    bounds = [0, *range(first + chunk, latent_frames, chunk), latent_frames]
    return sorted(set(b for b in bounds if b <= latent_frames))


def state_bytes(model: str, latents: np.ndarray) -> int:
    """Bytes of the decoder's state tensors (past_i) for these latents: what one copy of the state holds."""
    from vae_deploy.runtime.manifest import read_manifest

    spec = read_manifest(Path(model)).graph("decoder")
    env = spec.bind({spec.inputs[0].name: latents})
    return int(sum(np.prod(s) * 4 for s in spec.state_shapes(env)))


def ort_decode(task: dict) -> dict:
    from vae_deploy.runtime import load_runner

    z = np.load(task["latents"])
    started = time.perf_counter()
    with load_runner(task["model"], "ort-cpu", threads=task["threads"], **task["options"]) as runner:
        load_s = time.perf_counter() - started
        loaded = vm_hwm_mb()
        stream = runner.open_stream()
        bounds = step_bounds(z.shape[1])
        steps = []
        with open(task["out"], "wb") as f:
            for a, b in zip(bounds, bounds[1:], strict=False):
                t = time.perf_counter()
                frames = stream.step("decoder", z[:, a:b])["video"]
                steps.append(time.perf_counter() - t)
                f.write(frames.tobytes())
    return {"load_s": load_s, "rss_after_load_mb": loaded, "step_s": steps, "seconds": sum(steps),
            "state_mb": state_bytes(task["model"], z[:, :1]) / 2**20}


def diffusers_decode(task: dict) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(task["threads"])
    started = time.perf_counter()
    vae = diffusers.AutoencoderKLWan.from_pretrained(task["diffusers"]).eval()
    load_s = time.perf_counter() - started
    loaded = vm_hwm_mb()
    z = torch.from_numpy(np.load(task["latents"])).permute(0, 2, 1, 3, 4).contiguous()  # NCTHW
    with torch.no_grad():
        t = time.perf_counter()
        sample = vae.decode(z).sample
        seconds = time.perf_counter() - t
    return {"load_s": load_s, "rss_after_load_mb": loaded, "seconds": seconds, "frames": int(sample.shape[2])}


def vm_hwm_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). ru_maxrss would also count what the parent held when
    it forked this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(task: dict) -> None:
    limit = int(task["limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a case that does not fit fails, alone
    try:
        result = diffusers_decode(task) if task["options"] is None else ort_decode(task)
        result["fit"] = True
        result["peak_rss_mb"] = vm_hwm_mb()
    except (MemoryError, RuntimeError) as exc:  # ORT's failed allocation is a RuntimeError
        result = {"fit": False, "error": str(exc).splitlines()[0][:200]}
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
def spawn_and_measure(name: str, task: dict) -> dict:
    """Popen + wait4 ourselves (Popen.communicate reaps the child, and its rusage with it)."""
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(task)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    last = (err.strip().splitlines() or ["no output"])[-1][:200]
    failed = {"fit": False, "error": f"exit {proc.returncode}: {last}"}
    result = json.loads(lines[-1][7:]) if lines else failed
    # A case that died reports nothing: then the child's ru_maxrss, an upper bound (it counts the parent's
    # memory at the fork too: the parent stays small for that reason).
    result.setdefault("peak_rss_mb", usage.ru_maxrss / 1024)
    result.update(case=name, options=task["options"], threads=task["threads"], limit_gb=task["limit_gb"])
    mark = "" if result["fit"] else f" DID NOT FIT ({result['error']})"
    print(f"{name:18s} threads {task['threads']}: peak {result['peak_rss_mb']:7.0f} MB, "
          f"{result.get('seconds', float('nan')):7.2f} s{mark}", flush=True)
    return result


def build_tiny(work: Path) -> tuple[Path, Path]:
    import diffusers
    import torch

    from vae_deploy.export.jobs import export_job

    folder, model = work / "diffusers", work / "model"
    if not (model / "manifest.json").is_file():
        torch.manual_seed(0)
        diffusers.AutoencoderKLWan(**WAN_TINY).save_pretrained(folder)
        export_job(folder, model, real=0, force=True, log=print)
    return folder, model


def write_report(path: Path, meta: dict, results: list[dict]) -> None:
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    base = next((r for r in results if r["case"] == "before" and r["fit"]), None)
    lines = [f"# ort-cpu stream memory: {meta['model_note']}", "",
             f"Command: `{meta['command']}` ({meta['minutes']:.1f} min; benchmarks/runtime_memory.py).",
             f"Machine: {meta['cpus']} CPUs, {meta['memory']}; {meta['versions']}. Load average "
             f"{meta['load_before']:.1f} before / {meta['load_after']:.1f} after (other jobs share the "
             f"cores: seconds are noisy, peaks are per process and are not).",
             f"Work: {meta['work']}. Memory limit per case: {meta['limit_gb']} GB (RLIMIT_AS).", "",
             "| case | options | threads | peak RSS MB | after load MB | peak - load MB | vs before | "
             "seconds | vs before |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if not r["fit"]:
            lines.append(f"| {r['case']} | {_opts(r)} | {r['threads']} | did not fit at "
                         f"{r.get('limit_gb', meta['limit_gb'])} GB of address space (peak RSS "
                         f"{r['peak_rss_mb']:.0f} MB) | | | | | |")
            continue
        load = r["rss_after_load_mb"]
        rel = (f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x" if base else "")
        speed = (f"{r['seconds'] / base['seconds']:.2f}x" if base else "")
        lines.append(f"| {r['case']} | {_opts(r)} | {r['threads']} | {r['peak_rss_mb']:.0f} | {load:.0f} | "
                     f"{r['peak_rss_mb'] - load:.0f} | {rel} | {r['seconds']:.2f} | {speed} |")
    state = next((r["state_mb"] for r in results if "state_mb" in r), None)
    if state is not None:
        lines += ["", f"One copy of the decoder's state (past_i) at this size: {state:.0f} MB."]
    lines += ["", "Raw numbers (every step's seconds, load times): " + path.with_suffix(".json").name + "."]
    if meta.get("notes"):
        lines += ["", "## Notes", "", *meta["notes"]]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _opts(r: dict) -> str:
    if r["options"] is None:
        return "diffusers eager vae.decode"
    if not r["options"]:
        return "new defaults"
    if r["case"].startswith("after"):
        return "new defaults, " + ", ".join(f"{k}={v}" for k, v in r["options"].items())
    changed = {k: v for k, v in r["options"].items() if OLD_DEFAULTS.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "old defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--diffusers", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--build-tiny", type=Path)
    parser.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the decoded frames")
    parser.add_argument("--latent-frames", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--thread-cases", action="store_true")
    parser.add_argument("--cases", nargs="*", default=list(ORT_CASES))
    parser.add_argument("--limit-gb", type=float, default=16.0)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.build_tiny:
        build_tiny(args.build_tiny)
        return
    started, load_before = time.time(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="runtime_memory_"))
    if args.quick:  # built in a process of its own: this one stays small (see spawn_and_measure)
        subprocess.run([sys.executable, __file__, "--build-tiny", str(work / "tiny")], check=True)
        args.diffusers, args.model = work / "tiny" / "diffusers", work / "tiny" / "model"
    width, height = (int(v) for v in args.size.lower().split("x"))
    manifest = json.loads((args.model / "manifest.json").read_text())
    factor = 8  # Wan 2.1's spatial factor (and the tiny test config's)
    channels = manifest["graphs"]["decoder"]["inputs"][0]["shape"][2]
    latents = np.random.default_rng(0).standard_normal(
        (1, args.latent_frames, channels, height // factor, width // factor)).astype(np.float32)
    np.save(work / "latents.npy", latents)
    plan = [(name, args.threads) for name in args.cases]
    if args.thread_cases:
        plan += [("after", 1), ("after", os.cpu_count() or 2)]
    results = []
    for name, threads in plan:
        task = {"model": str(args.model), "diffusers": str(args.diffusers),
                "latents": str(work / "latents.npy"), "out": str(work / "frames.raw"), "threads": threads,
                "limit_gb": args.limit_gb, "options": ORT_CASES[name]}
        results.append(spawn_and_measure(name, task))
    frames = 1 + 4 * (args.latent_frames - 1)
    meta = {"command": " ".join([".venv/bin/python", *sys.argv]), "minutes": (time.time() - started) / 60,
            "cpus": os.cpu_count(), "memory": _memory(), "load_before": load_before,
            "load_after": os.getloadavg()[0], "limit_gb": args.limit_gb, "platform": platform.platform(),
            "versions": f"onnxruntime {version('onnxruntime')}, diffusers {version('diffusers')}, torch "
                        f"{version('torch')}, numpy {np.__version__}",
            "model_note": args.note or ("the tiny Wan 2.1 test config (--quick)" if args.quick
                                        else str(args.model)),
            "work": f"decode {args.latent_frames} latent frames ({frames} frames) at {width}x{height}, step "
                    f"bounds {step_bounds(args.latent_frames)} in latent frames (1 + 2, then 2: `decode` "
                    f"--chunk 8)"}
    out = args.out or (work / "runtime_memory" if args.quick else RESULTS / "runtime_memory")
    write_report(out, meta, results)
    print(f"wrote {out.with_suffix('.md')}")


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return f"{int(line.split()[1]) / 2**20:.1f} GB memory"
    return "memory unknown"


if __name__ == "__main__":
    main()
