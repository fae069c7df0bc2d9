"""`vae-deploy serve` under concurrent sessions (issue 25 item 4): the packaged default model and a small Wan
export, 1, 2, 4 and 8 sessions from a separate client process on loopback, batched (the defaults: --max-batch
8, --max-wait-ms 2) against the same server with --max-batch 1, and in-process FrameStream as the baseline;
then a long run for the server's RSS and a short fault run (the default model).

    .venv/bin/python benchmarks/serve_sessions.py [--counts 1,2,4,8] [--models default,wan] [--wan-model M]
                                                 [--frames 32] [--chunk 8] [--repeats 3] [--repeat-at 1,4]
                                                 [--rss-seconds 180] [--skip-faults] [--out PREFIX]

The small Wan: a random-weight diffusers AutoencoderKLWan (WAN_CONFIG: Wan 2.1's layout at base_dim 8, as
tests/external_zoo.py builds "wan2.1"), saved with save_pretrained and exported by `vae-deploy export SRC
--out M --real 5` (about two minutes on 2 cores; --wan-model reuses an export). Its first chunk holds
1 + chunk frames (the first-chunk rule): the client's chunker does that as FrameStream does, and the
server's session runs the local codec, which takes it.

The floors read 4 sessions (batched against --max-batch 1) and 1 session (the server against FrameStream), so
those counts run --repeats times (--repeat-at), the others once; both servers of a model are up side by side
for its whole part, and the three modes run one after the other in a new order each repetition (ORDERS). A
row's frames/s is the median over its repetitions; a ratio is the median of the repetitions' own ratios (the
two runs of one repetition are seconds apart, under the same load).

A session is what FrameStream does for one video, over the server (the client's RemoteFrameStream): RGB
frames of the packaged clip (176x144, fitted to the model's 160x128 as `encode` fits them) pushed frame by
frame, every --chunk frames one encode message and one decode message, each answered before the next. Session
i codes its own --frames frames of the clip (from frame 11 * i), written once as a PNG folder so that an
offline `vae-deploy encode` reads the same pixels: every session's latents are compared with that file's.
Every server and every FrameStream runs ONNX Runtime on one intra-op thread (`--threads 1`: batched rows
are then byte-identical to a row alone, docs/serve.md).

Measured per case: aggregate frames/s (all sessions' frames over the wall time from a common start to the
last session's end; opening the sessions is not counted), per-chunk latency (a chunk's push: fit, encode and
decode round trips) p50/p95, and the server's peak RSS (VmHWM of its process since it started: one server
per mode serves the counts in order, so the peak is cumulative).

The RSS run: one server (batched) and a client process running 4 sessions of 64x64 frames, chunks of one
frame, each session ending after 200 frames and a new one opening, for --rss-seconds; the server's VmRSS is
sampled every second. Growth: the median of the last 10 s against the median of the 10 s after warm-up (the
first fifth of the run).

The fault run (bounded): 3 client processes killed (SIGKILL) mid-session; 1,000 sessions (half encode, half
decode, 8 at a time) opened and abandoned without `end`, 400 encode sessions with a chunk in flight, the
others right after `ready`; then a session
that completes must equal the offline latents and /healthz must show no session and no state slot left; last,
SIGTERM under 4 sessions of load: every chunk answered before the stop equals the offline latents at its
place (none lost or duplicated), the server exits 0.

Writes PREFIX.json and PREFIX.md (default benchmarks/results/serve_sessions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SERVING = re.compile(r"serving .* on http://127\.0\.0\.1:(\d+) ")
CLIP_STRIDE = 11  # session i starts at frame 11 * i of the packaged clip (120 frames)


# ---------------------------------------------------------------------------------------------- the server

class Server:
    """`vae-deploy serve MODEL` (default: the packaged model) on a free port of 127.0.0.1, stderr drained by a
    thread."""

    def __init__(self, *args: str, model: Path | None = None):
        from vae_deploy.video.default_model import DEFAULT_MODEL_DIR

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "vae_deploy", "serve",
                                      str(model or DEFAULT_MODEL_DIR),
                                      "--host", "127.0.0.1",
                                      "--port", "0", "--threads", "1", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        found = threading.Event()
        self.port = 0

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                match = SERVING.search(line)
                if match:
                    self.port = int(match.group(1))
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SystemExit("the server did not start:\n" + "\n".join(self.lines))
        while self.health() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise SystemExit("the server never became healthy")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/session"

    def health(self) -> dict | None:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def wait_empty(self, timeout: float = 15.0) -> dict:
        """/healthz once no session and no state slot is left (or the last one seen at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health() or {}
            if (health.get("sessions"), health.get("streams")) == (0, 0) or time.monotonic() > deadline:
                return health
            time.sleep(0.1)

    def memory(self) -> dict:
        """VmRSS and VmHWM (peak) of the server process, in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ----------------------------------------------------------------------------------------------- the clips

def write_clips(root: Path, sessions: int, frames: int) -> list[Path]:
    """Session i's frames of the packaged clip as a PNG folder (lossless: `encode` reads the same pixels)."""
    import cv2

    from vae_deploy.video.samples import sample_video_path
    from vae_deploy.video.sources import open_source

    with open_source(sample_video_path("carphone_pristine")) as source:
        video = source.read(max_frames=CLIP_STRIDE * (sessions - 1) + frames)
    if len(video) < CLIP_STRIDE * (sessions - 1) + frames:
        raise SystemExit(f"the packaged clip has {len(video)} frames: fewer sessions or --frames")
    folders = []
    for i in range(sessions):
        folder = root / f"clip{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(video[CLIP_STRIDE * i:CLIP_STRIDE * i + frames]):
            cv2.imwrite(str(folder / f"{t:04d}.png"), frame[:, :, ::-1])  # RGB -> OpenCV's BGR
        folders.append(folder)
    return folders


def read_clip(folder: Path) -> np.ndarray:
    from vae_deploy.video.sources import open_source

    with open_source(str(folder)) as source:
        return source.read()


def offline_latents(folders: list[Path], chunk: int, model: Path | None = None) -> list[np.ndarray]:
    """`vae-deploy encode` of each clip (ort-cpu, one thread, untiled): the latents it stores."""
    from vae_deploy.runtime.latents import LatentReader

    out = []
    for folder in folders:
        path = folder.parent / f"{folder.name}_{model.name if model else 'default'}.vaelat"
        subprocess.run([sys.executable, "-m", "vae_deploy", "encode", str(folder), "--out", str(path),
                        *(["--model", str(model)] if model else []),
                        "--threads", "1", "--chunk", str(chunk), "--tile", "off", "--quiet"], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        out.append(np.array(LatentReader(path).latents))
    return out


# ------------------------------------------------------------------------- the client process (subcommand)

def client_main(argv: list[str]) -> None:
    """`serve_sessions.py client ...`: run sessions in threads, write their latents, timings and latencies."""
    parser = argparse.ArgumentParser(prog="serve_sessions.py client")
    parser.add_argument("--url", help="the server's session URL; none: in-process FrameStream")
    parser.add_argument("--model", type=Path, help="in-process FrameStream's model (default: the packaged)")
    parser.add_argument("--clips", type=Path, nargs="+", required=True)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, help="the RSS run: loop sessions over the clips this long")
    parser.add_argument("--session-frames", type=int, default=200)
    args = parser.parse_args(argv)
    if args.seconds:
        return _client_loop(args)

    from vae_deploy.serve.client import RemoteFrameStream
    from vae_deploy.video.frames import FrameStream

    clips = [read_clip(c) for c in args.clips]
    size = (clips[0].shape[2], clips[0].shape[1])
    streams = []
    for _ in clips:  # opened before the clock starts: a runner or a session's opening is not the workload
        if args.url:
            streams.append(RemoteFrameStream(args.url, size, chunk=args.chunk, timeout=120))
        else:
            streams.append(FrameStream.open(args.model, size, threads=1, chunk=args.chunk, tile="off"))
    start = threading.Barrier(len(clips) + 1)
    results: list[dict] = [{} for _ in clips]

    def run(i: int) -> None:
        latents, latencies = [], []
        try:
            start.wait(60)
            for frame in clips[i]:
                t0 = time.perf_counter()
                done = streams[i].push(frame)
                if done:
                    latencies.append(time.perf_counter() - t0)
                latents += [c.latents for c in done]
            t0 = time.perf_counter()
            done = streams[i].flush()
            if done:
                latencies.append(time.perf_counter() - t0)
            latents += [c.latents for c in done]
            results[i] = {"end": time.perf_counter(), "latencies": latencies,
                          "latents": np.concatenate(latents)}
        except Exception as err:  # noqa: BLE001 - reported in the results
            results[i] = {"error": f"{type(err).__name__}: {err}"}

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    start.wait(60)
    began = time.perf_counter()
    for t in threads:
        t.join(600)
    for s in streams:
        s.close()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"sessions failed: {errors}")
    np.savez(args.out.with_suffix(".npz"), *[r["latents"] for r in results])
    args.out.with_suffix(".json").write_text(json.dumps({
        "seconds": max(r["end"] for r in results) - began,
        "frames": int(sum(len(c) for c in clips)),
        "latencies": [x for r in results for x in r["latencies"]]}))


def _client_loop(args) -> None:
    """The RSS run's client: sessions of --session-frames frames each, one after another per thread, each
    ended properly, until --seconds have passed; counts the chunks the server answered."""
    from vae_deploy.serve.client import RemoteFrameStream

    clips = [read_clip(c) for c in args.clips]
    deadline = time.monotonic() + args.seconds
    counts = [0] * len(clips)
    sessions = [0] * len(clips)

    def run(i: int) -> None:
        frames = clips[i]
        size = (frames.shape[2], frames.shape[1])
        while time.monotonic() < deadline:
            with RemoteFrameStream(args.url, size, chunk=args.chunk, short_side=min(size), timeout=60) as s:
                sessions[i] += 1
                for t in range(args.session_frames):
                    counts[i] += 2 * len(s.push(frames[t % len(frames)]))  # an encode and a decode message
                    if time.monotonic() >= deadline:
                        break

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.seconds + 120)
    args.out.with_suffix(".json").write_text(json.dumps({"chunks": sum(counts), "sessions": sum(sessions)}))


def run_client(work: Path, name: str, clips: list[Path], chunk: int, url: str | None = None,
               extra: tuple[str, ...] = ()) -> dict:
    """The client subcommand in its own process; its JSON (and the latents, when it wrote them)."""
    out = work / name
    command = [sys.executable, __file__, "client", "--clips", *map(str, clips), "--chunk", str(chunk),
               "--out", str(out), *extra]
    if url:
        command += ["--url", url]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    result = json.loads(out.with_suffix(".json").read_text())
    if out.with_suffix(".npz").exists():
        with np.load(out.with_suffix(".npz")) as z:
            result["latents"] = [z[f"arr_{i}"] for i in range(len(clips))]
    return result


# -------------------------------------------------------------------------------------------- the cases

def compare(got: list[np.ndarray], want: list[np.ndarray]) -> dict:
    same = sum(g.shape == w.shape and g.tobytes() == w.tobytes() for g, w in zip(got, want, strict=True))
    worst = max(float(np.max(np.abs(g.astype(np.float32) - w.astype(np.float32))))
                if g.shape == w.shape else float("inf") for g, w in zip(got, want, strict=True))
    return {"identical": same, "sessions": len(got), "max_abs": worst}


def summarize(result: dict, want: list[np.ndarray]) -> dict:
    lat = sorted(result["latencies"])
    return {"fps": result["frames"] / result["seconds"], "frames": result["frames"],
            "seconds": result["seconds"], "p50_ms": 1000 * lat[len(lat) // 2],
            "p95_ms": 1000 * lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
            "chunks": len(lat), **compare(result["latents"], want)}


MODES = ("batched", "max-batch 1", "in-process FrameStream")
# the order of the modes in repetition i (cycled): every order once in six, and the two servers swap places
# from one repetition to the next, so that no mode is always first or always right after another
ORDERS = [(0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (0, 2, 1), (1, 2, 0)]


def sessions_cases(work: Path, label: str, model: Path | None, counts: list[int], folders: list[Path],
                   want: list[np.ndarray], chunk: int, repeats: int, repeat_at: list[int]) -> list[dict]:
    """One model's runs: both servers (batched and --max-batch 1) up side by side for the whole part, and for
    each session count the three modes one after the other, `repeats` times for the counts in `repeat_at`
    (once for the others), in the order ORDERS gives each repetition."""
    servers = {"batched": Server(model=model), "max-batch 1": Server("--max-batch", "1", model=model)}
    runs = []
    try:
        for n in counts:
            for rep in range(repeats if n in repeat_at else 1):
                order = [MODES[i] for i in ORDERS[rep % len(ORDERS)]]
                for mode in order:
                    server = servers.get(mode)
                    extra = ("--model", str(model)) if model and server is None else ()
                    result = run_client(work, f"{label}_{MODES.index(mode)}_{n}_{rep}", folders[:n], chunk,
                                        server.url if server else None, extra)
                    run = {"model": label, "mode": mode, "sessions": n, "rep": rep,
                           "position": order.index(mode), **summarize(result, want[:n]),
                           "latencies": result["latencies"],
                           "server_peak_rss_mib": server.memory()["VmHWM"] if server else None}
                    if server:
                        run["left"] = server.wait_empty()
                    runs.append(run)
                    print(f"{label} rep {rep}: " + _row_text(run), flush=True)
    finally:
        exits = {mode: server.stop() for mode, server in servers.items()}
    if any(exits.values()):
        raise SystemExit(f"the servers exited {exits}")
    return runs


def combine(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows of the table (one per model, mode and count: the median frames/s of its repetitions, the
    latency percentiles over all their chunks) and the ratios of the same repetition's runs (side by side)."""
    rows, ratios = [], []
    keys = sorted({(r["model"], r["sessions"]) for r in runs}, key=lambda k: (k[0] != "default", k[1]))
    for model, n in keys:
        for mode in MODES:
            mine = [r for r in runs if (r["model"], r["mode"], r["sessions"]) == (model, mode, n)]
            lat = sorted(x for r in mine for x in r["latencies"])
            rows.append({"model": model, "mode": mode, "sessions": n, "reps": len(mine),
                         "fps": statistics.median(r["fps"] for r in mine),
                         "fps_each": [r["fps"] for r in mine],
                         "p50_ms": 1000 * lat[len(lat) // 2],
                         "p95_ms": 1000 * lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
                         "server_peak_rss_mib": max((r["server_peak_rss_mib"] or 0) for r in mine) or None,
                         "identical": sum(r["identical"] for r in mine),
                         "compared": sum(r["sessions"] for r in mine),
                         "max_abs": max(r["max_abs"] for r in mine)})
        fps = {(r["mode"], r["rep"]): r["fps"] for r in runs if (r["model"], r["sessions"]) == (model, n)}
        reps = sorted({rep for _, rep in fps})
        for name, top, bottom in (("batched / max-batch 1", "batched", "max-batch 1"),
                                  ("batched / in-process", "batched", "in-process FrameStream"),
                                  ("max-batch 1 / in-process", "max-batch 1", "in-process FrameStream")):
            each = [fps[top, rep] / fps[bottom, rep] for rep in reps]
            ratios.append({"model": model, "sessions": n, "ratio": name, "median": statistics.median(each),
                           "each": each})
    return rows, ratios


def _row_text(r: dict) -> str:
    return (f"{r['mode']:24s} {r['sessions']} sessions: {r['fps']:7.1f} frames/s  p50 {r['p50_ms']:6.1f} ms  "
            f"p95 {r['p95_ms']:6.1f} ms  identical {r['identical']}/{r['sessions']} (max {r['max_abs']:.2g})")


def rss_case(work: Path, seconds: float) -> dict:
    """The server's RSS over a long run of small chunks (module docstring)."""
    import cv2

    from vae_deploy.video.samples import sample_video_path
    from vae_deploy.video.sources import open_source

    with open_source(sample_video_path("carphone_pristine")) as source:
        video = source.read(max_frames=40)
    clips = []
    for i in range(4):  # 64x64 crops, one per session
        folder = work / f"rss{i}"
        folder.mkdir(exist_ok=True)
        for t, frame in enumerate(video):
            crop = frame[10 * i:10 * i + 64, 20 * i:20 * i + 64]
            cv2.imwrite(str(folder / f"{t:04d}.png"), crop[:, :, ::-1])
        clips.append(folder)
    server = Server()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        began = time.monotonic()
        while not stop.wait(1.0):
            samples.append((time.monotonic() - began, server.memory()["VmRSS"]))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        result = run_client(work, "rss", clips, 1, server.url, ("--seconds", str(seconds)))
        stop.set()
        sampler.join(5)
        left = server.wait_empty()
        peak = server.memory()["VmHWM"]
    finally:
        code = server.stop()
    warm = seconds / 5
    after_warm = [r for t, r in samples if warm <= t < warm + 10]
    last = [r for t, r in samples if t >= samples[-1][0] - 10]
    base, end = statistics.median(after_warm), statistics.median(last)
    row = {"seconds": seconds, "chunks": result["chunks"], "sessions": result["sessions"],
           "rss_after_warmup_mib": base, "rss_end_mib": end, "growth": end / base - 1,
           "max_after_warmup_mib": max(r for t, r in samples if t >= warm), "peak_mib": peak,
           "left": left, "exit": code, "samples": samples}
    print(f"RSS run: {row['chunks']} chunks in {row['sessions']} sessions, {base:.1f} MiB after warm-up -> "
          f"{end:.1f} MiB at the end ({100 * row['growth']:+.2f}%), exit {code}", flush=True)
    return row


def _abandon(url: str, total: int, in_flight: int, frames: np.ndarray) -> int:
    """Open `total` sessions, 8 at a time, and drop each connection without `end`: the encode sessions among
    the last `in_flight` right after sending a chunk, the others right after `ready`. Returns how many opened
    and how many tries were refused (too_many_sessions while dropped sessions were still being freed)."""
    import socket as socketlib
    from concurrent.futures import ThreadPoolExecutor

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    from vae_deploy.serve.protocol import pack, unpack

    chunk = pack({"op": "chunk"}, frames)
    refused = [0]

    def one(i: int) -> int:
        for _ in range(200):  # a dropped session's slot frees once the server sees it gone: retry a while
            with ws_connect(url, open_timeout=30, compression=None) as ws:
                try:
                    ws.send(pack({"op": "open", "mode": "encode" if i % 2 else "decode"}))
                    header = unpack(ws.recv(timeout=30))[0]
                except ConnectionClosed:
                    header = {"op": "error"}
                if header["op"] != "ready":
                    refused[0] += 1
                    time.sleep(0.05)
                    continue
                if i >= total - in_flight and i % 2:
                    ws.send(chunk)
                ws.socket.shutdown(socketlib.SHUT_RDWR)  # gone: no `end`, no close handshake
                return 1
        return 0

    with ThreadPoolExecutor(8) as pool:
        opened = sum(pool.map(one, range(total)))
    return opened, refused[0]


def fault_case(work: Path, folders: list[Path], want: list[np.ndarray], chunk: int) -> dict:
    """Killed clients, abandoned sessions, then SIGTERM under load (module docstring)."""
    out: dict = {}
    server = Server()
    try:
        out["rss_at_start_mib"] = server.memory()
        # 1. client processes killed mid-session (each loops over sessions: it is mid-session when killed)
        killed = []
        try:
            for i in range(3):
                command = [sys.executable, __file__, "client", "--url", server.url, "--clips",
                           str(folders[i]), "--chunk", str(chunk), "--out", str(work / f"killed{i}"),
                           "--seconds", "60"]
                killed.append(subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}))
            time.sleep(5.0)
            during = server.health()
        finally:
            for p in killed:
                p.kill()
                p.wait(10)
        out["killed"] = {"clients": len(killed), "sessions_when_killed": during, "rss_mib": server.memory(),
                         "left": server.wait_empty()}
        # 2. 1,000 sessions opened and abandoned
        # the chunk left in flight is one 64x64 frame: the server finishes it before it frees the session
        frames = (read_clip(folders[0])[:1].transpose(0, 3, 1, 2)[:, :, :64, :64] / 255).astype(np.float32)
        began = time.monotonic()
        opened, refused = _abandon(server.url, 1000, 800, frames)
        out["abandoned"] = {"opened": opened, "refused_tries": refused, "seconds": time.monotonic() - began,
                            "left": server.wait_empty(30)}
        # 3. still serving: a whole session equals the offline encode
        result = run_client(work, "after_faults", folders[:1], chunk, server.url)
        out["after"] = {**compare(result["latents"], want[:1]), "left": server.wait_empty(),
                        "rss_mib": server.memory()}
    finally:
        out["exit_after_faults"] = server.stop()
    print(f"faults: {json.dumps({k: v for k, v in out.items()})}", flush=True)
    out["sigterm"] = sigterm_case(work, folders[:4], want[:4], chunk)
    return out


def sigterm_case(work: Path, folders: list[Path], want: list[np.ndarray], chunk: int) -> dict:
    """SIGTERM while 4 sessions stream: the answered chunks equal the offline latents at their place."""
    from vae_deploy.serve.client import RemoteSession, ServerRefusal
    from vae_deploy.video.fit import plan_fit

    server = Server()
    clips = [read_clip(f) for f in folders]
    policy = plan_fit((clips[0].shape[2], clips[0].shape[1]), 128, 8, 3, "snap")
    answered: list[list[np.ndarray]] = [[] for _ in clips]
    endings: list[str] = [""] * len(clips)
    sessions = [RemoteSession(server.url, "encode", timeout=60) for _ in clips]

    def run(i: int) -> None:
        fitted = np.stack([policy.fit(f) for f in clips[i]])
        try:
            for _ in range(50):  # the clip again and again: still streaming when the stop comes
                for start in range(0, len(fitted), chunk):
                    answered[i].append(sessions[i].encode(fitted[start:start + chunk]))
            endings[i] = "completed"
        except ServerRefusal as err:
            endings[i] = f"{err.code} ({err.close_code})"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    time.sleep(3.0)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    code = server.stop()
    for s in sessions:
        s.close()
    checks = []
    for got, reference in zip(answered, want, strict=True):
        per_clip = len(reference)
        whole = np.concatenate(got) if got else np.zeros((0, *reference.shape[1:]), np.float16)
        expected = np.concatenate([reference] * (len(whole) // per_clip + 1))[:len(whole)]
        checks.append(bool(whole.tobytes() == expected.tobytes()))
    row = {"sessions": len(clips), "chunks_answered": [len(a) for a in answered], "endings": endings,
           "answered_equal_offline": checks, "exit": code}
    print(f"sigterm: {row}", flush=True)
    return row


# ------------------------------------------------------------------------------------------ a small Wan

WAN_CONFIG = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
              "latents_std": [1.5, 2.0, 0.5, 1.0]}  # Wan 2.1's layout at tiny widths (tests/external_zoo.py)


def export_wan(work: Path) -> tuple[Path, float]:
    """A random-weight diffusers AutoencoderKLWan (WAN_CONFIG), saved with save_pretrained and exported by
    `vae-deploy export SRC --out M --real 5` (5 real frames: Wan's 1 + 4); the model folder, the seconds."""
    began = time.monotonic()
    source, model = work / "wan_source", work / "wan_model"
    build = ("import sys, json, torch, diffusers; torch.manual_seed(0); "
             "diffusers.AutoencoderKLWan(**json.loads(sys.argv[1])).eval().save_pretrained(sys.argv[2])")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", build, json.dumps(WAN_CONFIG), str(source)], check=True, env=env,
                   timeout=300, capture_output=True)
    subprocess.run([sys.executable, "-m", "vae_deploy", "export", str(source), "--out", str(model), "--real",
                    "5"], check=True, env=env, timeout=900, capture_output=True)
    return model, time.monotonic() - began


# --------------------------------------------------------------------------------------------- the report

def report(args, rows: list[dict], ratios: list[dict], rss: dict | None, faults: dict | None, minutes: float,
           loads: list[float], machine: str, wan_export: float | None, wan_shape: str | None) -> list[str]:
    lines = ["# `vae-deploy serve`: concurrent sessions, batched and not, against in-process FrameStream", "",
             f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}` ({minutes:.1f} min; "
             f"benchmarks/serve_sessions.py). Machine: {machine}, shared with other jobs (another helper's "
             f"tests ran beside this run): load average (1 min) "
             f"{', '.join(f'{x:.1f}' for x in loads)} at the "
             f"start of each part. Models: the packaged default model (per-frame encoder, "
             f"temporal-Transformer decoder with state) and a small Wan export (`wan`: a random-weight "
             f"diffusers AutoencoderKLWan, Wan 2.1's layout at base_dim 8, 4 latent channels, 8x spatial and "
             f"4x temporal, causal state and a first-chunk rule of 1 + 4k frames; built and exported by the "
             f"script: " + (f"{wan_export:.0f} s" if wan_export is not None else "an earlier export given "
                            "with --wan-model")
             + f"{', frames fitted to ' + wan_shape if wan_shape else ''}). "
             f"ort-cpu, one intra-op thread in every server and every FrameStream. Session i: {args.frames} "
             f"frames of the packaged clip (176x144, fitted to 160x128 for the default model) from frame "
             f"{CLIP_STRIDE} * i, chunks of {args.chunk} frames (Wan: the first chunk 1 + {args.chunk}), "
             f"each chunk encoded and then decoded (RemoteFrameStream, as FrameStream does), from a client "
             f"process of its own on 127.0.0.1. The two servers of a model (batched: the defaults "
             f"--max-batch 8 --max-wait-ms 2; and --max-batch 1) run side by side for the whole part, and "
             f"each session count runs the three modes one after the other, {args.repeats} times for "
             f"{args.repeat_at} session(s) (in a new order each repetition: the two servers swap places "
             f"every time), once for "
             f"the other counts: frames/s is the median over the repetitions (each one listed), the ratios "
             f"below the median of the same repetition's ratios.",
             "", "| model | mode | sessions | frames/s (median; each) | chunk p50 ms | chunk p95 ms "
             "| server peak RSS MiB | latents = offline encode |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        rss_text = f"{r['server_peak_rss_mib']:.0f}" if r["server_peak_rss_mib"] else "-"
        same = (f"{r['identical']}/{r['compared']} byte-identical" if r["identical"] == r["compared"]
                else f"{r['identical']}/{r['compared']} byte-identical, max abs {r['max_abs']:.3g}")
        each = "" if r["reps"] == 1 else " (" + ", ".join(f"{x:.1f}" for x in r["fps_each"]) + ")"
        lines.append(f"| {r['model']} | {r['mode']} | {r['sessions']} | {r['fps']:.1f}{each} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {rss_text} | {same} |")
    lines += ["", "Ratios of aggregate frames/s (median of the repetitions' own ratios; each in brackets):",
              ""]
    for model in dict.fromkeys(r["model"] for r in ratios):
        for n in dict.fromkeys(r["sessions"] for r in ratios if r["model"] == model):
            mine = [r for r in ratios if (r["model"], r["sessions"]) == (model, n)]
            lines.append(f"- {model}, {n} session(s): " + "; ".join(
                f"{r['ratio']} = {r['median']:.2f}x" + ("" if len(r["each"]) == 1 else " (" + ", ".join(
                    f"{x:.2f}" for x in r["each"]) + ")") for r in mine))
    lines += ["", "Floors:", ""]
    for model in dict.fromkeys(r["model"] for r in ratios):
        got = {(r["sessions"], r["ratio"]): r["median"] for r in ratios if r["model"] == model}
        if (4, "batched / max-batch 1") in got:
            x = got[4, "batched / max-batch 1"]
            lines.append(f"- {model}: batched >= 1.0x the unbatched server at 4 sessions: {x:.3f}x, "
                         f"{'holds' if x >= 1.0 else 'does not hold'}")
        for name in ("batched / in-process", "max-batch 1 / in-process"):
            if (1, name) in got:
                x = got[1, name]
                lines.append(f"- {model}: one session through the server ({name.split(' /')[0]}) within 15% "
                             f"of in-process FrameStream: {x:.3f}x, "
                             f"{'holds' if x >= 0.85 else 'does not hold'}")
    if rss:
        lines += ["", "## RSS over many chunks", "",
                  f"One batched server, 4 sessions of 64x64 frames at a time, chunks of one frame (an encode "
                  f"and a decode message each), each session ended after 200 frames and another opened: "
                  f"{rss['chunks']} chunks answered in {rss['sessions']} sessions over "
                  f"{rss['seconds']:.0f} s. "
                  f"VmRSS {rss['rss_after_warmup_mib']:.1f} MiB after warm-up (median of the 10 s after the "
                  f"first fifth), {rss['rss_end_mib']:.1f} MiB at the end (median of the last 10 s): "
                  f"{100 * rss['growth']:+.2f}% (floor: < 5%); highest after warm-up "
                  f"{rss['max_after_warmup_mib']:.1f} MiB, peak since start {rss['peak_mib']:.1f} MiB. Left "
                  f"after the run: {rss['left']}; exit {rss['exit']}."]
    if faults:
        k, a, after, term = faults["killed"], faults["abandoned"], faults["after"], faults["sigterm"]
        lines += ["", "## Faults (bounded)", "",
                  f"- {k['clients']} client processes (each a RemoteFrameStream: an encode and a decode "
                  f"session) killed with SIGKILL mid-session "
                  f"(/healthz before the kill: {k['sessions_when_killed']}); after: {k['left']}.",
                  f"- {a['opened']} sessions opened and abandoned without `end` (8 at a time; 400 of them "
                  f"dropped with an encode chunk in flight, the rest right after `ready`) in "
                  f"{a['seconds']:.1f} s ({a['refused_tries']} tries refused with too_many_sessions while "
                  f"dropped sessions were being freed, then retried); after: {a['left']}.",
                  f"- Then a whole session: latents {after['identical']}/{after['sessions']} byte-identical "
                  f"to the offline encode; after it: {after['left']}; the server's exit on SIGTERM: "
                  f"{faults['exit_after_faults']}.",
                  f"- The fault server's memory (MiB): at start {_mib(faults['rss_at_start_mib'])}, after "
                  f"the killed clients {_mib(k['rss_mib'])}, at the end {_mib(after['rss_mib'])}.",
                  f"- SIGTERM under {term['sessions']} streaming sessions: chunks answered per session "
                  f"{term['chunks_answered']}, each session's answered chunks equal to the offline latents "
                  f"at their place: {term['answered_equal_offline']} (none lost, none duplicated); the "
                  f"sessions ended with {term['endings']}; exit {term['exit']}."]
    return lines


def _mib(memory: dict) -> str:
    return f"RSS {memory['VmRSS']:.0f} (peak {memory['VmHWM']:.0f})"


def machine() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    count = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{names[0] if names else 'unknown CPU'}, nproc {count}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--models", default="default,wan", help="default and/or wan")
    parser.add_argument("--wan-model", type=Path, help="an exported small Wan to reuse (default: export one)")
    parser.add_argument("--frames", type=int, default=32, help="frames per session")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the counts in --repeat-at")
    parser.add_argument("--repeat-at", default="1,4", help="the counts the floors read: repeated")
    parser.add_argument("--rss-seconds", type=float, default=180.0, help="0: no RSS run")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_sessions")
    args = parser.parse_args()
    args.counts = [int(n) for n in args.counts.split(",")]
    args.repeat_at = [int(n) for n in args.repeat_at.split(",")]
    models = args.models.split(",")
    began, loads = time.time(), [os.getloadavg()[0]]
    runs: list[dict] = []
    wan_export = wan_shape = None
    with tempfile.TemporaryDirectory(prefix="serve_sessions_") as tmp:
        work = Path(tmp)
        folders = write_clips(work, max(*args.counts, 4), args.frames)  # the fault run takes 4
        want = offline_latents(folders, args.chunk)
        if "default" in models:
            runs += sessions_cases(work, "default", None, args.counts, folders, want, args.chunk,
                                   args.repeats, args.repeat_at)
            loads.append(os.getloadavg()[0])
        if "wan" in models:
            wan = args.wan_model
            if wan is None:
                wan, wan_export = export_wan(work)
                print(f"exported the small Wan in {wan_export:.0f} s", flush=True)
            wan_want = offline_latents(folders, args.chunk, wan)
            wan_shape = "x".join(map(str, wan_want[0].shape[-2:][::-1])) + " latents"
            runs += sessions_cases(work, "wan", wan, args.counts, folders, wan_want, args.chunk, args.repeats,
                                   args.repeat_at)
            loads.append(os.getloadavg()[0])
        rows, ratios = combine(runs)
        rss = rss_case(work, args.rss_seconds) if args.rss_seconds else None
        loads.append(os.getloadavg()[0])
        faults = None if args.skip_faults else fault_case(work, folders, want, args.chunk)
        loads.append(os.getloadavg()[0])
    lines = report(args, rows, ratios, rss, faults, (time.time() - began) / 60, loads, machine(), wan_export,
                   wan_shape)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"sessions": rows, "ratios": ratios, "runs": [{k: v for k, v in r.items() if k != "latencies"}
                                                     for r in runs],
         "rss": rss, "faults": faults, "loads": loads}, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
