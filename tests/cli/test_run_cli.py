"""`vae-deploy run / encode / decode / demo` as a user runs them: real video files, real exported models, one
clear line for every bad input, Ctrl-C, and no torch."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error
from cli_support import cli_process as cli
from external_zoo import external_folder, external_model  # noqa: F401 (pytest fixtures)

from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.default_model import DEFAULT_MODEL_DIR
from vae_deploy.video.sources import open_source


@pytest.fixture(scope="module")
def frame_model(tiny_video_model):
    return tiny_video_model("frame")


def read_video(path) -> np.ndarray:
    with open_source(path) as source:
        return source.read()


def write_video(path, frames, fourcc="MJPG", fps=30):
    size = (frames.shape[2], frames.shape[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()

def test_run_then_encode_decode_give_the_same_video(vd, frame_model, carphone, tmp_path):
    ran = vd("run", carphone, "--model", frame_model, "--out", tmp_path / "run.mkv", "--side-by-side",
             tmp_path / "both.mp4", "--latents", tmp_path / "run.vaelat", "--metrics", tmp_path / "m.json",
             "--max-frames", 20, "--chunk", 4)
    assert ran.returncode == 0, ran.stderr
    assert "ran 20 frames" in ran.stdout and "compression 24.0x" in ran.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    expected_keys = {"frames", "seconds", "frames_per_s", "chunk_latency_ms", "psnr", "ssim", "flicker",
                     "compression_ratio", "psnr_source", "backend", "model_fingerprint"}
    assert expected_keys <= set(metrics)
    assert metrics["frames"] == 20 and metrics["backend"] == "ort-cpu" and metrics["chunk"] == 4
    assert set(metrics["chunk_latency_ms"]) == {"p50", "p95", "chunks"}
    assert metrics["frames_per_s"] == pytest.approx(20 / metrics["seconds"])
    assert metrics["working_size"] == [40, 32]  # the manifest's short side (32) by default
    enc = vd("encode", carphone, "-o", tmp_path / "clip.vaelat", "--model", frame_model, "--max-frames", 20,
             "--chunk", 4)
    assert enc.returncode == 0, enc.stderr
    assert (tmp_path / "clip.vaelat").read_bytes() == (tmp_path / "run.vaelat").read_bytes()
    dec = vd("decode", tmp_path / "clip.vaelat", "-o", tmp_path / "dec.mkv", "--model", frame_model)
    assert dec.returncode == 0, dec.stderr
    run_frames, dec_frames = read_video(tmp_path / "run.mkv"), read_video(tmp_path / "dec.mkv")
    assert run_frames.shape == (20, 144, 176, 3)
    np.testing.assert_array_equal(run_frames, dec_frames)
    header = LatentReader(tmp_path / "clip.vaelat").header
    assert header.fps == pytest.approx(30000 / 1001) and header.source_size == [176, 144]
    assert header.model_fingerprint == metrics["model_fingerprint"]
    cap = cv2.VideoCapture(str(tmp_path / "dec.mkv"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30000 / 1001, rel=1e-3)  # written at the source rate
    cap.release()


def test_size_and_fit_options(vd, frame_model, carphone, tmp_path):
    result = vd("run", carphone, "--model", frame_model, "--size", 48, "--fit", "pad", "--max-frames", 3,
                "--metrics", tmp_path / "m.json", "-q")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["working_size"] == [59, 48] and metrics["model_size"] == [64, 48]
    assert metrics["fit"] == "pad"
    assert metrics["compression_ratio"] == pytest.approx(59 * 48 * 3 / (2 * 4 * 8 * 6))


def test_temporal_factor_chunk_rule_and_exact_frame_count(vd, tiny_video_model, carphone, tmp_path):
    model = tiny_video_model("causal3d-t2")
    bad = vd("run", carphone, "--model", model, "--chunk", 3)
    assert_one_line_error(bad, "--chunk 3 is not a multiple of the model's temporal factor 2")
    ok = vd("run", carphone, "--model", model, "--chunk", 4, "--max-frames", 11, "-o", tmp_path / "out.mkv")
    assert ok.returncode == 0, ok.stderr
    assert read_video(tmp_path / "out.mkv").shape[0] == 11


def test_odd_sizes_and_grayscale_sources(vd, frame_model, tiny_video_model, carphone, tmp_path):
    frames = open_source(carphone).read(max_frames=6)
    odd = tmp_path / "odd"
    odd.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(odd / f"f{i}.png"), cv2.cvtColor(frame[:17, :33], cv2.COLOR_RGB2BGR))
    result = vd("run", odd, "--model", frame_model, "-o", tmp_path / "odd_out.mkv", "--size", 0,
                "--fit", "pad", "--metrics", tmp_path / "odd.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "odd.json").read_text())
    assert metrics["source_size"] == [33, 17] and metrics["model_size"] == [40, 24]
    assert metrics["frames"] == 6 and metrics["fps"] == 25.0  # an image folder has no rate: the default
    # .mkv is lossless FFV1 in RGB (video/writers.py): an odd size is kept exactly.
    assert read_video(tmp_path / "odd_out.mkv").shape == (6, 17, 33, 3)
    gray = tmp_path / "gray"
    gray.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(gray / f"f{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    for model in (frame_model, tiny_video_model("frame-gray")):
        result = vd("run", gray, "--model", model, "-o", tmp_path / "gray_out.mkv", "--fps", 12)
        assert result.returncode == 0, result.stderr
        out = read_video(tmp_path / "gray_out.mkv")
        assert out.shape == (6, 144, 176, 3)
    assert np.array_equal(out[..., 0], out[..., 2])  # a 1-channel model writes gray frames as RGB


def test_truncated_video_processes_what_decodes(vd, frame_model, carphone, tmp_path):
    write_video(tmp_path / "full.avi", open_source(carphone).read(max_frames=30))
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
    result = vd("run", tmp_path / "cut.avi", "--model", frame_model, "-o", tmp_path / "out.mp4", "--metrics",
                tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["truncated"] and metrics["expected_frames"] == 30 and 0 < metrics["frames"] < 30
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: the source ended after {metrics['frames']} of the 30 frames it announced "
                       f"(truncated or damaged); the {metrics['frames']} frames that decode were processed"]
    assert read_video(tmp_path / "out.mp4").shape[0] == metrics["frames"]


def _bad_inputs(tmp_path, carphone, frame_model, other_latents):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    (tmp_path / "no_frames").mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "out.mp4"
    return {
        "missing file": (["run", tmp_path / "nope.mp4", "-o", out], "no such file or folder"),
        "not a video": (["run", text, "-o", out], "is not a video OpenCV can decode"),
        "zero frames": (["run", empty, "-o", out], "is not a video OpenCV can decode"),
        "empty folder": (["run", tmp_path / "no_frames", "-o", out], "has no images"),
        "unavailable camera": (["run", "7", "-o", out], "camera 7 is not available"),
        "unwritable output": (["run", carphone, "-o", blocker / "out.mp4"], "cannot write to output folder"),
        "output is a folder": (["run", carphone, "-o", tmp_path / "no_frames"], "it is a folder"),
        "unwritable metrics": (["run", carphone, "--metrics", blocker / "m.json"], "cannot write to output"),
        "unknown output type": (["run", carphone, "-o", tmp_path / "out.xyz"], "cannot write"),
        "not a latent file": (["decode", text, "-o", out], "is not a vae-deploy latent file"),
        "latents of another model": (["decode", other_latents, "-o", out], "was encoded by another model"),
        "bad chunk": (["run", carphone, "--chunk", 0, "-o", out], "--chunk must be a positive"),
        "bad fit": (["run", carphone, "--fit", "crop", "-o", out], "unknown fit mode 'crop'"),
        "not a video model": (["run", carphone, "--model", tmp_path / "mlp"], "is not a video model"),
    }


def test_bad_inputs_give_one_line_and_no_output(vd, frame_model, tiny_video_model, mlp_model_dir, carphone,
                                                tmp_path):
    import shutil

    shutil.copytree(mlp_model_dir, tmp_path / "mlp")
    other = tmp_path / "other.vaelat"
    assert vd("encode", carphone, "-o", other, "--model", tiny_video_model("causal3d-t1"), "--max-frames",
              2).returncode == 0
    cases = _bad_inputs(tmp_path, carphone, frame_model, other)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (args, pattern) in cases.items():
        if "--model" not in args:
            args = [*args, "--model", frame_model]
        result = vd(*args)
        assert_one_line_error(result, pattern)
        after = sorted(p.name for p in tmp_path.iterdir())
        assert after == before, f"{name} left {set(after) ^ set(before)}"
        assert not list((tmp_path / "a_file").parent.glob(".*part*")), name


def test_no_default_model_is_one_clear_line(vd, carphone, monkeypatch, tmp_path):
    import vae_deploy.video.default_model as default_model

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tmp_path / "none")
    assert_one_line_error(vd("run", carphone), "no default model is packaged")


def test_demo_writes_every_output_to_the_folder_it_names(vd, frame_model, monkeypatch, tmp_path):
    import vae_deploy.video.default_model as default_model

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", frame_model)  # the mechanism, on a tiny model
    result = vd("demo", "--out-dir", tmp_path / "demo", "-q")
    assert result.returncode == 0, result.stderr
    assert f"demo outputs are in {(tmp_path / 'demo').resolve()}" in result.stdout
    assert "carphone_pristine.mp4" in result.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "carphone.vaelat", "decoded.mp4", "metrics.json", "reconstruction.mp4", "report.html",
        "side_by_side.mp4", "source.mp4"]  # the report page and its two videos: docs/report.md
    assert read_video(tmp_path / "demo" / "reconstruction.mp4").shape == (120, 144, 176, 3)
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["frames"] == 120


NO_DEFAULT_MODEL = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(),
                                      reason="no default model packaged (scripts/make_default_model.py)")


@pytest.fixture(scope="module")
def packaged_demo(packaged_demo_dir):
    """`vae-deploy demo` with the packaged model (a process that exited 0, shared by the run): its metrics."""
    return json.loads((packaged_demo_dir / "metrics.json").read_text())


@NO_DEFAULT_MODEL
def test_the_packaged_default_model_is_a_small_verified_video_model(packaged_demo):
    from vae_deploy.runtime import read_manifest

    manifest = read_manifest(DEFAULT_MODEL_DIR)  # every file's sha256 checked
    assert manifest.kind in ("frame", "temporal", "causal3d") and manifest.parity["passed"]
    assert manifest.preprocessing["short_side"] >= 128
    config = json.loads((DEFAULT_MODEL_DIR / "reference" / "config.json").read_text())
    assert "carphone_pristine" not in json.dumps(config["recipe"]["data"]["train"])  # the demo clip is unseen
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size < 10e6
    assert packaged_demo["frames"] == 120 and packaged_demo["working_size"] == [160, 128]
    assert packaged_demo["compression_ratio"] >= 24.0
    assert packaged_demo["model_fingerprint"] == manifest.fingerprint


@NO_DEFAULT_MODEL
def test_the_packaged_default_model_reaches_26_db_on_a_clip_it_never_saw(packaged_demo):
    # whole frames at the working size, through exported graphs, on a clip no recipe trains on
    assert packaged_demo["psnr"] >= 26.0


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT's default action in the child, as a terminal's foreground job has it: a test run started in
    the background of a non-interactive shell (`cmd &`, as CI runners may do) ignores SIGINT, and children
    inherit that, so the Ctrl-C below would be ignored rather than tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bytes_in(folder) -> int:
    """The bytes of the files in `folder` now; a file removed meanwhile (the run's write probe) counts 0."""
    total = 0
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def test_ctrl_c_leaves_a_playable_video_and_exits_130(frame_model, carphone, tmp_path):
    frames = open_source(carphone).read(max_frames=40)
    # 3200 frames: a fast machine streams this model at about 300 frames/s, so seconds of frames remain
    write_video(tmp_path / "long.avi", np.concatenate([frames] * 80))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_deploy", "run", tmp_path / "long.avi", "--model", frame_model,
         "--chunk", "1", "--size", "64", "-o", out / "recon.mp4", "--latents", out / "clip.vaelat",
         "--metrics", out / "m.json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait until frames are being written
        if _bytes_in(out) > 30_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "interrupted:" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip.vaelat", "m.json", "recon.mp4"]  # no temporaries
    done = read_video(out / "recon.mp4").shape[0]
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["interrupted"] and 0 < done == metrics["frames"] < 3200
    assert LatentReader(out / "clip.vaelat").header.frame_count == done


TORCH_BLOCKED = textwrap.dedent("""
    import importlib.abc, runpy, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name == "torchvision":
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from vae_deploy.cli.app import main
    import vae_deploy.video.default_model as default_model
    default_model.DEFAULT_MODEL_DIR = __import__("pathlib").Path(sys.argv[1])
    for args in (sys.argv[2:8], sys.argv[8:12], sys.argv[12:]):
        sys.argv = ["vae-deploy", *args]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, (args, exc.code)
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("ok without torch")
""")


def test_run_encode_decode_demo_work_without_torch(frame_model, carphone, tmp_path):
    args = [frame_model,
            "run", carphone, "-o", tmp_path / "run.mkv", "--max-frames", "9",
            "encode", carphone, "-o", tmp_path / "c.vaelat",
            "decode", tmp_path / "c.vaelat", "-o", tmp_path / "dec.mkv"]
    result = subprocess.run([sys.executable, "-c", TORCH_BLOCKED, *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ok without torch" in result.stdout
    assert read_video(tmp_path / "run.mkv").shape[0] == 9
    assert read_video(tmp_path / "dec.mkv").shape[0] == 120  # encode without --max-frames: the whole clip
    demo = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-c", TORCH_BLOCKED.replace(
        "for args in (sys.argv[2:8], sys.argv[8:12], sys.argv[12:]):", "for args in (sys.argv[2:],):"),
        str(frame_model), "demo", "--out-dir", str(demo), "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (demo / "reconstruction.mp4").is_file() and (demo / "metrics.json").is_file()


# ---------------------------------------------------------------- outputs onto a folder's own images


@pytest.mark.parametrize("option", ["--out", "--side-by-side", "--latents", "--metrics"])
def test_an_output_onto_an_image_the_folder_source_reads_is_refused(vd, frame_model, tmp_path, option):
    """`run FOLDER --out FOLDER/its_only_image.png` overwrote the input: the distinct-output check skipped
    inputs that are folders. Any output that is one of the folder's images is refused in one line."""
    folder = tmp_path / "frames"
    folder.mkdir()
    image = folder / "its_only_image.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 90, np.uint8))
    before = image.read_bytes()
    result = vd("run", folder, "--model", frame_model, option, image)
    assert_one_line_error(result, f"{option} {image} is one of the images of the input {folder}")
    assert image.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["its_only_image.png"]


def test_a_new_image_in_the_folder_source_is_refused_and_other_files_there_are_written(vd, frame_model,
                                                                                       tmp_path):
    """A new image in the folder would become a frame of the next run: refused; a video or the metrics
    there are not read as frames, and are written."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.full((48, 64, 3), 90, np.uint8))
    result = vd("run", folder, "--model", frame_model, "--out", folder / "recon.PNG")
    assert_one_line_error(result, "is one of the images of the input")
    ok = vd("run", folder, "--model", frame_model, "--out", folder / "recon.mkv", "--metrics",
            folder / "m.json", "-q")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "m.json", "recon.mkv"]


# ---------------------------------------------------------------- latents beyond fp16


@pytest.fixture(scope="module")
def overflowing_kl(tiny_kl_model, tmp_path_factory):
    """The tiny diffusers AutoencoderKL with a manifest whose latent normalization scales by 1e6 (a
    latents_std of 1e-6): its normalized latents are far beyond float16's 65504. The manifest is not among
    the files it vouches for, so the folder still loads."""
    import shutil

    folder = tmp_path_factory.mktemp("overflow") / "model"
    shutil.copytree(tiny_kl_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    norm = manifest["preprocessing"]["latent_normalization"]
    norm["scale"] = [1e6] * len(norm["scale"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_encode_refuses_latents_that_overflow_fp16_and_publishes_nothing(vd, overflowing_kl, carphone,
                                                                         tmp_path):
    """Stored as fp16 they were inf, and `encode` exited 0 with a file that decodes to garbage. A real
    process: numpy's overflow warning must not add a line."""
    result = cli("encode", carphone, "-o", tmp_path / "c.vaelat", "--model", overflowing_kl,
                 "--max-frames", 2)
    assert_one_line_error(result, "latents overflow fp16: the normalized latents reach ")
    assert "beyond float16's 65504" in result.stderr
    run = vd("run", carphone, "--model", overflowing_kl, "--max-frames", 2, "--out", tmp_path / "r.mkv",
             "--latents", tmp_path / "r.vaelat")
    assert_one_line_error(run, "latents overflow fp16")
    assert list(tmp_path.iterdir()) == []
    raw = vd("encode", carphone, "-o", tmp_path / "raw.vaelat", "--model", overflowing_kl, "--max-frames", 2,
             "--raw-latents", "-q")  # the encoder's own latents fit
    assert raw.returncode == 0, raw.stderr


def test_encode_dataset_records_an_overflowing_video_as_failed_and_publishes_no_file(overflowing_kl, carphone,
                                                                                     tmp_path):
    """The batch encoder writes through the same codec and writer: the video fails with the same reason."""
    result = cli("encode-dataset", carphone, "--model", overflowing_kl, "--out", tmp_path / "lat",
                 "--workers", 1, "--max-frames", 2, "-q")
    assert result.returncode == 1, (result.stdout, result.stderr)
    entries = [json.loads(line) for line in (tmp_path / "lat" / "index.jsonl").read_text().splitlines()]
    assert [e["status"] for e in entries] == ["failed"] and "latents overflow fp16" in entries[0]["error"]
    assert list((tmp_path / "lat").rglob("*.vaelat")) == []


# ---------------------------------------------------------------- --chunk advice on a Wan model


@pytest.mark.slow
def test_a_chunk_below_wans_temporal_factor_suggests_one_chunk_size(vd, external_model,  # noqa: F811
                                                                    carphone, tmp_path):
    """`--chunk 1` on Wan (4 frames per latent frame) said "use 4 or 4"; it names 4 once. A chunk between
    two multiples names both."""
    wan = external_model("wan2.1").model_dir
    one = vd("run", carphone, "--model", wan, "--chunk", 1, "--out", tmp_path / "o.mp4")
    assert_one_line_error(one, "--chunk 1 is not a multiple of the model's temporal factor 4", 2)
    assert one.stderr.strip().endswith("; use 4"), one.stderr
    five = vd("encode", carphone, "--model", wan, "--chunk", 5, "-o", tmp_path / "o.vaelat")
    assert_one_line_error(five, "--chunk 5 is not a multiple of the model's temporal factor 4", 2)
    assert five.stderr.strip().endswith("; use 4 or 8"), five.stderr
    assert list(tmp_path.iterdir()) == []
