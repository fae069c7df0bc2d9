"""`vae-deploy run SRC1 SRC2 ... --out-dir DIR` (video/multi_source.py, video/multi_jobs.py): several sources
through one model in one batched pipeline, on real clips and real ONNX Runtime sessions of the tiny model
zoo (no mocks).

Exactness, measured here: each source's frames and latents equal `run SRC --out X --latents Y` alone, bit
for bit, with --threads 1 (the batched calls compute every row as alone: docs/architecture.md, "Batched
streams"); that is what the test asserts. With two ORT threads (this machine's default) the frame model was
still bit-identical, while the causal3d-t2 model's batched calls differed from the lone stream's: its fp16
latents by one fp16 step at most (6.1e-5), its frames by at most 1.7e-6 in fp32 before the uint8 rounding,
which moved 49 of 3.0M uint8 values by 1 (carphone, 40 frames at --size 64, chunk 4).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error
from torch_free_support import edge_env

from vae_deploy.video.multi_jobs import source_names
from vae_deploy.video.sources import open_source

FRAMES, SHORT = 14, 9  # the short clip ends two rounds before the other (chunk 4), on a partial group


def read_video(path) -> np.ndarray:
    with open_source(path) as source:
        return source.read()


def write_avi(path, frames: np.ndarray, fps: int = 25) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, carphone) -> dict:
    """The packaged clip and a shorter clip of other frames and another size that has the same stem (in
    another folder): their names must differ, and they meet in different calls of each round."""
    root = tmp_path_factory.mktemp("multi_source")
    frames = open_source(carphone).read(max_frames=40)
    (root / "other").mkdir()
    short = root / "other" / f"{carphone.stem}.avi"
    write_avi(short, np.stack([cv2.resize(f, (128, 96)) for f in frames[-SHORT:]]))
    bad = root / "bad_folder"  # fails mid-stream: its 7th image has another size
    bad.mkdir()
    for i, frame in enumerate(frames[:8]):
        image = frame if i < 6 else frame[:64, :80]
        cv2.imwrite(str(bad / f"f{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    corrupt = root / "corrupt.mp4"  # exists, but holds no video: fails when opened
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 300)
    return {"long": carphone, "short": short, "bad": bad, "corrupt": corrupt}



def assert_each_equals_its_single_run(vd, clips, tmp_path, common) -> None:
    """The long and the short clip's outputs in tmp_path/out (named <stem> and <stem>-2: the same stem)
    equal `run SRC` alone with the same options: frames and latents, bit for bit."""
    name = clips["long"].stem
    for source, folder in ((clips["long"], name), (clips["short"], f"{name}-2")):
        alone = vd("run", source, "--out", tmp_path / "alone.mkv", "--latents", tmp_path / "alone.vaelat",
                   *common)
        assert alone.returncode == 0, alone.stderr
        np.testing.assert_array_equal(read_video(tmp_path / "out" / folder / "reconstruction.mkv"),
                                      read_video(tmp_path / "alone.mkv"))
        assert (tmp_path / "out" / folder / "latents.vaelat").read_bytes() == \
            (tmp_path / "alone.vaelat").read_bytes()

def test_two_sources_equal_their_single_runs_and_the_shorter_ends_early(vd, tiny_video_model, clips,
                                                                         tmp_path):
    model = tiny_video_model("causal3d-t2")  # causal state and a temporal factor: the padding rule too
    common = ["--model", model, "--chunk", 4, "--max-frames", FRAMES, "--threads", 1, "-q"]
    ran = vd("run", clips["long"], clips["short"], "--out-dir", tmp_path / "out", "--codec", "ffv1",
             "--with-latents", "--metrics", tmp_path / "all.json", *common)
    assert ran.returncode == 0, ran.stderr
    name = clips["long"].stem
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name, f"{name}-2"]
    assert_each_equals_its_single_run(vd, clips, tmp_path, common)
    aggregate = json.loads((tmp_path / "all.json").read_text())
    assert not (tmp_path / "out" / "metrics.json").exists()  # --metrics PATH takes the aggregate
    assert [(s["name"], s["status"], s["frames"]) for s in aggregate["sources"]] == [
        (name, "finished", FRAMES), (f"{name}-2", "finished", SHORT)]
    assert aggregate["frames"] == FRAMES + SHORT and aggregate["sources_failed"] == 0
    assert aggregate["frames_per_s"] == pytest.approx(aggregate["frames"] / aggregate["seconds"])
    own = json.loads((tmp_path / "out" / f"{name}-2" / "metrics.json").read_text())
    assert own["frames"] == SHORT and own["psnr"] is not None and own["source_size"] == [128, 96]
    assert read_video(tmp_path / "out" / f"{name}-2" / "reconstruction.mkv").shape == (SHORT, 96, 128, 3)


def test_a_failing_source_leaves_the_others_finished(vd, tiny_video_model, clips, tmp_path):
    out = tmp_path / "out"
    ran = vd("run", clips["bad"], clips["long"], clips["corrupt"], "--out-dir", out, "--model",
             tiny_video_model("frame"), "--chunk", 4, "--max-frames", 12, "--threads", 1, "-q")
    assert ran.returncode == 1, ran.stderr
    errors = ran.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: source ") for line in errors), ran.stderr
    assert "bad_folder" in errors[0] and "all frames must share one size" in errors[0]
    assert "corrupt" in errors[1] and "Traceback" not in ran.stderr
    aggregate = json.loads((out / "metrics.json").read_text())
    assert [(s["name"], s["status"]) for s in aggregate["sources"]] == [
        ("bad_folder", "failed"), (clips["long"].stem, "finished"), ("corrupt", "failed")]
    assert aggregate["sources_failed"] == 2 and aggregate["frames"] == 12
    # the failed ones leave nothing (as a failed `run` publishes nothing); the other is complete
    assert sorted(p.name for p in out.iterdir()) == [clips["long"].stem, "metrics.json"]
    assert read_video(out / clips["long"].stem / "reconstruction.mp4").shape[0] == 12
    assert sorted(p.name for p in out.rglob(".*")) == []  # no temporary file left


@pytest.mark.parametrize("extra, fragment", [
    ([], "2 sources need --out-dir DIR"),
    (["--out", "{tmp}/o.mp4"], "2 sources need --out-dir DIR, where each gets a folder of its own (--out is"),
    (["--out-dir", "{tmp}/d", "--out", "{tmp}/o.mp4", "--report", "{tmp}/r"],
     "--out, --report are for a single source without --out-dir"),
    (["--out-dir", "{tmp}/d", "--side-by-side", "{tmp}/s.mp4"], "--side-by-side is for a single source"),
    (["--out-dir", "{tmp}/d", "--latents", "{tmp}/l.vaelat"], "--latents is for a single source"),
    (["--with-latents"], "--with-latents is for --out-dir"),
    (["--out-dir", "{tmp}/d", "{tmp}/missing.mp4"], "no such file or folder"),
    # 176x144 frames fit 900 KB whole alone; two sources share each call, and no tile of both fits it
    (["--out-dir", "{tmp}/d", "--size", "0", "--tile-budget", "900KB"],
     "2 sources share each call, a tile of each; give a larger --tile-budget or run fewer sources"),
], ids=["no out-dir", "--out", "--out and --report", "--side-by-side", "--latents", "--with-latents alone",
        "a missing source", "auto: a budget too small for the sources sharing a call"])
def test_refusals_are_one_line_before_any_work(vd, tiny_video_model, clips, tmp_path, extra, fragment):
    args = [arg.format(tmp=tmp_path) for arg in extra]
    result = vd("run", clips["long"], clips["short"], "--model", tiny_video_model("frame"), *args)
    assert_one_line_error(result, fragment, 2)
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder made


def test_tiled_sources_equal_their_single_tiled_runs(vd, tiny_video_model, clips, tmp_path):
    """--tile 64 with two sources of different sizes (176x144: 3x3 tiles; 128x96: 2x2) in one batched run:
    each source's frames and latents equal `run SRC --tile 64` alone, bit for bit with --threads 1 (each
    (source, tile) pair a slot of its own; runtime/tiled_batched_streams.py)."""
    common = ["--model", tiny_video_model("causal3d-t2"), "--size", "0", "--tile", "64", "--chunk", 4,
              "--max-frames", 6, "--threads", 1, "--codec", "ffv1", "-q"]
    ran = vd("run", clips["long"], clips["short"], "--out-dir", tmp_path / "out", "--with-latents", *common)
    assert ran.returncode == 0, ran.stderr
    assert_each_equals_its_single_run(vd, clips, tmp_path, common)


def test_auto_tiles_when_the_sources_sharing_a_call_need_it(vd, tiny_video_model, clips, tmp_path):
    """--tile auto with a budget that holds one 176x144 frame of the frame model whole (alone: untiled) but
    not a call of both sources: the batched run tiles (48 px tiles fit 1 MB for two rows; at 900 KB none
    does, the refusal in the table above), and each source still equals its single run, bit for bit."""
    common = ["--model", tiny_video_model("frame"), "--size", "0", "--tile-budget", "1MB", "--chunk", 1,
              "--max-frames", 3, "--threads", 1, "--codec", "ffv1", "-q"]
    ran = vd("run", clips["long"], clips["short"], "--out-dir", tmp_path / "out", "--with-latents", *common)
    assert ran.returncode == 0, ran.stderr
    alone = vd("run", clips["long"], "--out", tmp_path / "alone.mkv", "--latents", tmp_path / "alone.vaelat",
               *common)
    assert alone.returncode == 0, alone.stderr
    folder = tmp_path / "out" / clips["long"].stem
    np.testing.assert_array_equal(read_video(folder / "reconstruction.mkv"),
                                  read_video(tmp_path / "alone.mkv"))
    assert (folder / "latents.vaelat").read_bytes() == (tmp_path / "alone.vaelat").read_bytes()


def test_names_come_from_the_sources_and_repeats_get_a_suffix(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "frames").mkdir()
    for folder in ("a", "."):
        (tmp_path / folder / "clip.mp4").write_bytes(b"")
    specs = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "clip.mp4"), str(tmp_path / "frames"), "0",
             "rtsp://cam.local:554/live?id=1", "http://x/Clip.MP4", "CLIP", str(tmp_path / "metrics.mp4")]
    assert source_names(specs) == ["clip", "clip-2", "frames", "camera0", "cam.local_554_live_id_1",
                                   "x_Clip.MP4", "CLIP-3", "metrics"]


def test_one_source_with_out_dir_runs_through_the_same_layout(vd, tiny_video_model, clips, tmp_path):
    """--out-dir with one source: its folder and the aggregate, and a copy of a folder source is named by
    its folder."""
    shutil.copytree(clips["bad"], tmp_path / "frames")
    result = vd("run", tmp_path / "frames", "--out-dir", tmp_path / "out", "--model",
                tiny_video_model("frame"), "--max-frames", 5, "-q")
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "out" / "frames" / "reconstruction.mp4").shape[0] == 5
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["sources_finished"] == 1


def test_sigterm_keeps_every_sources_finished_frames(tiny_video_model, tmp_path):
    """As `run` with one source: SIGTERM ends the run with exit 143, each source's outputs hold the frames
    it finished (complete files) and the aggregate says so. Run where `import torch` fails, as on the edge
    install."""
    ramp = np.linspace(0, 255, 96, dtype=np.float32)[None, :, None]
    frames = np.stack([np.broadcast_to((ramp + 3 * i) % 256, (64, 96, 3)).astype(np.uint8)
                       for i in range(1500)])
    for name in ("a", "b"):
        write_avi(tmp_path / f"{name}.avi", frames)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vae_deploy", "run", tmp_path / "a.avi", tmp_path / "b.avi", "--out-dir",
            out, "--model", tiny_video_model("frame"), "--size", "128", "--codec", "ffv1", "--with-latents"]
    process = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=edge_env())
    deadline = time.monotonic() + 120
    # until both sources have finished frames: their latents are written as they go (the FFV1 videos are
    # buffered by the muxer for hundreds of frames)
    while time.monotonic() < deadline and process.poll() is None:
        parts = [p for p in out.glob("*/.latents*") if p.is_file() and p.stat().st_size >= 4096]
        if len(parts) == 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGTERM): ") and last.endswith(" frames done were kept"), err
    kept = int(last.split(": ")[1].split()[0])
    done = [read_video(out / name / "reconstruction.mkv").shape[0] for name in ("a", "b")]
    assert 0 < min(done) and sum(done) == kept < 3000
    aggregate = json.loads((out / "metrics.json").read_text())
    assert aggregate["interrupted"] and [s["status"] for s in aggregate["sources"]] == ["interrupted"] * 2
    assert [s["frames"] for s in aggregate["sources"]] == done
    assert all((out / name / "latents.vaelat").is_file() for name in ("a", "b"))
    assert sorted(p.name for p in out.rglob(".*")) == []
