"""Every command against the failures users meet: bad input, a full disk, SIGTERM, two writers on one output.

Each table row is one command line with what must come of it: the exit code, a fragment of the one message
line, and the files that must not exist afterwards (nothing published under a final name, no temporary or
empty folder left). A new command joins by adding rows here. Usage mistakes get Typer's usage message and
exit 2; everything else ends in exactly one `error: ...` line. Real processes are used where the process
itself matters (signals, concurrent writers, a broken install); the rest run through the same `main()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import external_zoo
import numpy as np
import pytest
from cli_support import assert_one_line_error, full_disk, invoke_main
from cli_support import cli_process as cli

from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sources import open_source

external_folder = external_zoo.external_folder  # a session fixture: diffusers model folders

RECIPE = """\
[model]
kind = "mlp"
latent_dim = {latent_dim}

[data]
kind = "mnist"
source = "mnist-5k"

[train]
epochs = 1
"""


@pytest.fixture
def vd(capsys, monkeypatch):
    """`vae-deploy` through main() in this process."""
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_video(path: Path, frames: int, size: tuple[int, int] = (96, 64), fourcc: str = "MJPG") -> Path:
    """A real video file of moving gradients (OpenCV's writer), `size` = (width, height)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, size)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    for i in range(frames):
        frame = (ramp + 3 * i + np.arange(3, dtype=np.float32) * 40) % 256
        writer.write(np.broadcast_to(frame, (h, w, 3)).astype(np.uint8))
    writer.release()
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a writer left behind (every atomic writer names them .<name>.…)."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.name != ".probe")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_video_model, external_folder) -> dict[str, Path]:
    """Named inputs the table's command lines refer to as {name}."""
    root = tmp_path_factory.mktemp("hostile_inputs")
    clip = root / "clip.mp4"
    shutil.copyfile(sample_video_path("carphone_pristine"), clip)
    one = root / "one_by_one"
    one.mkdir()
    for i in range(3):
        cv2.imwrite(str(one / f"{i}.png"), np.full((1, 1, 3), 40 * i, np.uint8))
    (root / "binary.toml").write_bytes(b"\x00\xff\xfe\x89PNG")
    (root / "zero_latent.toml").write_text(RECIPE.format(latent_dim=0))
    (root / "recipe.toml").write_text(RECIPE.format(latent_dim=2))
    model = tiny_video_model("frame")
    string_schema = root / "string_schema"
    shutil.copytree(model, string_schema)
    manifest = json.loads((string_schema / "manifest.json").read_text())
    manifest["schema_version"] = "1"
    (string_schema / "manifest.json").write_text(json.dumps(manifest))
    from vae_deploy.export.slim import slim_folder

    slim_folder(model, root / "slim")  # the model for a device: no reference/
    # model folders export refuses to re-profile: a modified graph, a manifest promising another spec
    tampered = root / "tampered"
    shutil.copytree(model, tampered)
    graph = bytearray((tampered / "decoder.onnx").read_bytes())
    graph[len(graph) // 2] ^= 1
    (tampered / "decoder.onnx").write_bytes(bytes(graph))
    other_spec = root / "other_spec"
    shutil.copytree(model, other_spec)
    manifest = json.loads((other_spec / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["tolerance"]["max_abs"] = 0.5
    (other_spec / "manifest.json").write_text(json.dumps(manifest))
    (root / "opset17.toml").write_text('name = "opset17"\nprecision = "fp32"\nopset = 17\n')
    latents = root / "clip.vaelat"
    made = cli("encode", clip, "--model", model, "-o", latents, "-q")
    assert made.returncode == 0, made.stderr
    (root / "no_videos").mkdir()
    (root / "no_videos" / "notes.txt.bak").write_text("not a video\n")
    (root / "list_of_missing.txt").write_text("clip.mp4\ngone.mp4\n")
    # one training image: two ranks cannot share it
    (root / "one_image.toml").write_text(RECIPE.format(latent_dim=2).replace(
        'source = "mnist-5k"', 'source = "mnist-5k"\nvalid_holdout = 3999'))
    return {"root": root, "clip": clip, "one_by_one": one, "binary": root / "binary.toml",
            "zero_latent": root / "zero_latent.toml", "recipe": root / "recipe.toml", "model": model,
            "string_schema": string_schema, "latents": latents, "causal": tiny_video_model("causal3d-t1"),
            "diffusers": external_folder("kl-sd"), "no_videos": root / "no_videos",
            "list_of_missing": root / "list_of_missing.txt", "one_image": root / "one_image.toml",
            "slim": root / "slim", "tampered": tampered, "other_spec": other_spec,
            "opset17": root / "opset17.toml"}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """A run folder with one finished epoch, trained by one process (built only for the rows that name it)."""
    run = tmp_path_factory.mktemp("one_process_run") / "run"
    recipe = run.parent / "small.toml"
    recipe.write_text(RECIPE.format(latent_dim=2).replace('source = "mnist-5k"',
                                                          'source = "mnist-5k"\nvalid_holdout = 3500'))
    made = cli("train", recipe, "--out", run, "--threads", "1")
    assert made.returncode == 0, made.stderr
    return run


# ---------------------------------------------------------------- usage mistakes: Typer's message, exit 2

USAGE_CASES = [
    ("unknown option", ["run", "x", "--bogus"], "No such option"),
    ("no command", [], "Usage"),
    ("unknown command", ["bogus"], "No such command"),
    ("non-integer chunk", ["run", "x", "--chunk", "abc"], "--chunk"),
    ("missing argument", ["run"], "Missing argument"),
    ("zero epochs", ["train", "R.toml", "--epochs", "0"], "--epochs"),
    ("zero threads", ["run", "x", "--threads", "0"], "--threads"),
    ("negative threads", ["encode", "x", "-o", "y.vaelat", "--threads", "-1"], "--threads"),
    ("decode without output", ["decode", "x.vaelat"], "Missing option"),
    ("zero samples", ["sample", "m", "-n", "0"], "'-n'"),
    ("too many samples", ["sample", "m", "-n", "100000000"], "'-n'"),
    ("zero grid columns", ["sample", "m", "--columns", "0"], "--columns"),
]


@pytest.mark.parametrize("args, fragment", [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_usage_mistakes_get_the_usage_message_and_exit_2(args, fragment):
    result = cli(*args, timeout=60)  # a real process: the entry point as installed
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert fragment in result.stderr + result.stdout
    assert "Usage" in result.stderr + result.stdout


# ---------------------------------------------------------------- bad input: one line, nothing written


@dataclass
class Case:
    name: str
    args: list[str]  # {name} refers to the `inputs` fixture or {out}, the case's own output folder
    fragment: str  # must appear in the one error line
    code: int | None = 2  # None: any non-zero code (torchrun reports its ranks' failure as its own code)
    absent: list[str] = field(default_factory=list)  # relative to {out}: must not exist afterwards
    unchanged: list[str] = field(default_factory=list)  # input names whose bytes must survive


BAD_INPUT_CASES = [
    Case("recipe is a folder", ["train", "{root}"], "is a folder"),
    Case("recipe is binary", ["train", "{binary}", "--out", "{out}/run"], "not a TOML file", absent=["run"]),
    Case("latent_dim 0", ["train", "{zero_latent}", "--out", "{out}/run"], "latent_dim must be at least 1",
         absent=["run"]),
    Case("resume a run that is not there", ["train", "{recipe}", "--out", "{out}/none", "--resume"],
         "no run folder", absent=["none"]),
    Case("size over the limit", ["run", "{clip}", "--model", "{model}", "--size", "100000", "--out",
                                 "{out}/o.mp4"], "over the limit of 8192", absent=["o.mp4"]),
    Case("a device as source", ["run", "/dev/zero", "--model", "{model}", "--out", "{out}/o.mp4"],
         "not a regular file", absent=["o.mp4"]),
    Case("infinite fps", ["run", "{clip}", "--model", "{model}", "--fps", "inf", "--out", "{out}/o.mp4"],
         "--fps must be a frame rate", absent=["o.mp4"]),
    Case("huge fps", ["run", "{clip}", "--model", "{model}", "--fps", "1e12", "--out", "{out}/o.mp4"],
         "at most 1000", absent=["o.mp4"]),
    Case("zero fps to decode", ["decode", "{latents}", "--model", "{model}", "--fps", "0", "-o",
                                "{out}/o.mp4"], "--fps must be", absent=["o.mp4"]),
    Case("no encoder for the suffix", ["run", "{clip}", "--model", "{model}", "--out", "{out}/o.bin"],
         "vae-deploy writes .mp4", absent=["o.bin"]),
    Case("1x1 source to mp4", ["run", "{one_by_one}", "--model", "{model}", "--out", "{out}/o.mp4"],
         "at least 16x16", absent=["o.mp4"]),
    Case("output is the source", ["run", "{clip}", "--model", "{model}", "--out", "{clip}"],
         "is the input", unchanged=["clip"]),
    Case("decode onto its own latents", ["decode", "{latents}", "--model", "{model}", "-o", "{latents}"],
         "is the input", unchanged=["latents"]),
    Case("three outputs on one file", ["run", "{clip}", "--model", "{model}", "--out", "{out}/x.mp4",
                                       "--side-by-side", "{out}/x.mp4", "--metrics", "{out}/x.mp4"],
         "--out and --side-by-side are both", absent=["x.mp4"]),
    Case("latents beside the model's own files", ["encode", "{clip}", "--model", "{model}", "-o",
                                                  "{model}/x.vaelat"], "inside the model folder"),
    Case("schema version as a string", ["run", "{clip}", "--model", "{string_schema}", "--out",
                                        "{out}/o.mp4"], "is not an integer", absent=["o.mp4"]),
    Case("export over a model without --force", ["export", "{mlp_checkpoint}", "--out", "{mlp_model_dir}",
                                                 "--real", "0"], "--force"),
    Case("export of a folder that is no checkpoint", ["export", "{root}", "--out", "{out}/m"],
         "is neither a vae-deploy run folder", absent=["m"]),
    # re-profiling a model folder (export/reprofile.py): refused before anything is traced or written
    Case("export a slim model folder", ["export", "{slim}", "--out", "{out}/m"],
         "which re-profiling needs for the parity check", absent=["m"]),
    Case("export a folder of fp16 graphs", ["export", "{mlp_model_fp16_dir}", "--out", "{out}/m"],
         "holds fp16 graphs: re-export from an fp32 folder", absent=["m"]),
    Case("export a modified model folder", ["export", "{tampered}", "--out", "{out}/m"],
         "decoder.onnx does not match the manifest", absent=["m"]),
    Case("export a model folder onto itself", ["export", "{model}", "--out", "{model}", "--force"],
         "is the model folder: write the re-profiled folder somewhere else"),
    Case("export a model folder at another opset", ["export", "{model}", "--profile", "{opset17}", "--out",
                                                    "{out}/m"], "holds opset 18 graphs", absent=["m"]),
    Case("export a model folder whose specs changed", ["export", "{other_spec}", "--out", "{out}/m"],
         "graph specs computed now from its reference differ", absent=["m"]),
    Case("verify a folder that is no model", ["verify", "{root}"], "is not a model folder"),
    Case("verify with an unknown backend", ["verify", "{mlp_model_dir}", "--backend", "nope"],
         "unknown backend 'nope'"),
    Case("evaluate a folder that is no run", ["evaluate", "{root}"], "not a checkpoint folder"),
    Case("sample to a non-image file", ["sample", "{mlp_model_dir}", "--out", "{out}/g.gif"],
         "must be an image file", absent=["g.gif"]),
    Case("sample from a causal video model", ["sample", "{causal}", "--out", "{out}/g.png"],
         "sampling needs a model without streaming state", absent=["g.png"]),
    Case("image output from a video", ["run", "{clip}", "--model", "{model}", "--out", "{out}/o.png"],
         "holds more than one frame", absent=["o.png"]),
    Case("bench with words for batch sizes", ["bench", "{mlp_model_dir}", "--batch-sizes", "one"],
         "comma-separated integers"),
    Case("encode_dataset of a missing source", ["encode-dataset", "{out}/gone.mp4", "--model", "{model}",
                                                "--out", "{out}/lat"], "no such video, folder or list",
         absent=["lat"]),
    Case("encode_dataset of a folder without videos", ["encode-dataset", "{no_videos}", "--model", "{model}",
                                                       "--out", "{out}/lat"], "no videos found",
         absent=["lat"]),
    Case("encode_dataset with 0 workers", ["encode-dataset", "{clip}", "--model", "{model}", "--workers", "0",
                                           "--out", "{out}/lat"], "--workers must be at least 1",
         absent=["lat"]),
    Case("encode_dataset on an unreachable Ray", ["encode-dataset", "{clip}", "--model", "{model}",
                                                  "--engine", "ray", "--address", "127.0.0.1:9", "--out",
                                                  "{out}/lat"],
         "cannot reach the Ray cluster at 127.0.0.1:9", absent=["lat"]),
    Case("encode_dataset --out is a file", ["encode-dataset", "{clip}", "--model", "{model}", "--out",
                                            "{clip}"], "is a file; give a folder", unchanged=["clip"]),
    Case("encode_dataset of a list naming a missing video", ["encode-dataset", "{list_of_missing}",
                                                             "--model", "{model}", "--out", "{out}/lat"],
         "list_of_missing.txt:2)", absent=["lat"]),
    Case("encode_dataset --shard-size without shards", ["encode-dataset", "{clip}", "--model", "{model}",
                                                        "--shard-size", "2", "--out", "{out}/lat"],
         "--shard-size is for --format webdataset", absent=["lat"]),
    Case("a codec the container cannot hold", ["run", "{clip}", "--model", "{model}", "--out", "{out}/o.mp4",
                                               "--codec", "ffv1"], "cannot write ffv1 into o.mp4",
         absent=["o.mp4"]),
    Case("run --report is a file", ["run", "{clip}", "--model", "{model}", "--report", "{clip}"],
         "it is a file; give a folder", unchanged=["clip"]),
    Case("train --nproc 0", ["train", "{recipe}", "--nproc", "0", "--out", "{out}/run"],
         "--nproc must be at least 1", absent=["run"]),
    Case("train --nproc over what the data allows", ["train", "{one_image}", "--nproc", "2", "--max-steps",
                                                     "1", "--out", "{out}/run"],
         "2 ranks cannot share this data", None, absent=["run"]),
    Case("train --nproc resuming a one-process run", ["train", "{recipe}", "--nproc", "2", "--resume",
                                                      "--out", "{one_process_run}"],
         "trained on 1 process(es), this is 2", None),
    # issue 22: outputs onto a folder source's images, frame rates no file holds
    Case("run --out onto an image of its folder source", ["run", "{one_by_one}", "--model", "{model}", "--out",
                                                          "{one_by_one}/0.png"],
         "is one of the images of the input"),
    Case("run --latents as a new image in its folder source", ["run", "{one_by_one}", "--model", "{model}",
                                                               "--latents", "{one_by_one}/3.png"],
         "is one of the images of the input"),
    Case("fps below one frame per 500 s", ["run", "{clip}", "--model", "{model}", "--fps", "0.0004", "--out",
                                           "{out}/o.mp4"], "at least 0.002", absent=["o.mp4"]),
    Case("decode at fps 1e-300", ["decode", "{latents}", "--model", "{model}", "--fps", "1e-300", "-o",
                                  "{out}/o.mp4"], "--fps must be a frame rate of at least 0.002",
         absent=["o.mp4"]),
    # issue 24: a folder slimmed for a device
    Case("slim a folder that is no model", ["slim", "{root}", "--out", "{out}/s"], "is not a model folder",
         absent=["s"]),
    Case("slim onto the model folder", ["slim", "{model}", "--out", "{model}", "--force"],
         "is the model folder"),
    Case("slim into the model folder", ["slim", "{model}", "--out", "{model}/device"], "inside it"),
    Case("slim over a model without --force", ["slim", "{model}", "--out", "{mlp_model_dir}"], "--force"),
    Case("slim over a folder that is no model", ["slim", "{model}", "--out", "{root}", "--force"],
         "refusing to replace it"),
    Case("slim a folder with a bad manifest", ["slim", "{string_schema}", "--out", "{out}/s"],
         "is not an integer", absent=["s"]),
    Case("torch backend on a slim folder", ["run", "{clip}", "--model", "{slim}", "--backend", "torch",
                                            "--out", "{out}/o.mp4"], "has no PyTorch reference",
         absent=["o.mp4"]),
    # spatial tiles (runtime/tile_plan.py): refused before any frame is read
    Case("run --tile below the halo", ["run", "{clip}", "--model", "{model}", "--tile", "16", "--out",
                                       "{out}/o.mp4"], "smaller than this model's halo", absent=["o.mp4"]),
    Case("encode --tile off the alignment", ["encode", "{clip}", "--model", "{model}", "--tile", "52", "-o",
                                             "{out}/o.vaelat"], "not a multiple of 8 pixels",
         absent=["o.vaelat"]),
    Case("decode --tile abc", ["decode", "{latents}", "--model", "{model}", "--tile", "abc", "-o",
                               "{out}/o.mp4"], "--tile must be a size in pixels, auto or off", absent=["o.mp4"]),
    Case("run --tile-budget too small for one tile", ["run", "{clip}", "--model", "{model}", "--size", "256",
                                                      "--tile-budget", "1KB", "--out", "{out}/o.mp4"],
         "is too small for this model at", absent=["o.mp4"]),
    Case("encode_dataset --tile below the halo", ["encode-dataset", "{clip}", "--model", "{model}", "--tile",
                                                  "8", "--out", "{out}/ds"], "smaller than this model's halo",
         absent=["ds"]),
    # several sources through one model (run SRC... --out-dir): refused before any work
    Case("run two sources without --out-dir", ["run", "{clip}", "{clip}", "--model", "{model}", "--out",
                                               "{out}/o.mp4"], "2 sources need --out-dir DIR",
         absent=["o.mp4"]),
    Case("run --out-dir with --side-by-side", ["run", "{clip}", "{clip}", "--model", "{model}", "--out-dir",
                                               "{out}/d", "--side-by-side", "{out}/s.mp4"],
         "--side-by-side is for a single source", absent=["d", "s.mp4"]),
    Case("run --out-dir with a missing source", ["run", "{clip}", "{out}/gone.mp4", "--model", "{model}",
                                                 "--out-dir", "{out}/d"], "no such file or folder",
         absent=["d"]),
    Case("run --out-dir is a file", ["run", "{clip}", "{clip}", "--model", "{model}", "--out-dir", "{clip}"],
         "is a file; give a folder", unchanged=["clip"]),
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES, ids=[c.name for c in BAD_INPUT_CASES])
def test_bad_input_gets_one_line_and_writes_nothing(vd, inputs, mlp_checkpoint, mlp_model_dir, tmp_path,
                                                    request, case):
    names = {k: str(v) for k, v in inputs.items()} | {"out": str(tmp_path), "mlp_checkpoint": str(
        mlp_checkpoint), "mlp_model_dir": str(mlp_model_dir)}
    if any("{one_process_run}" in arg for arg in case.args):
        run = request.getfixturevalue("one_process_run")
        names["one_process_run"] = str(run)
        run_files = {p.name: sha256(p) for p in run.iterdir() if p.is_file()}
    if any("{mlp_model_fp16_dir}" in arg for arg in case.args):  # built only for the rows that name it
        names["mlp_model_fp16_dir"] = str(request.getfixturevalue("mlp_model_fp16_dir"))
    before = {name: sha256(inputs[name]) for name in case.unchanged}
    model_files = {folder: sorted((p.name, sha256(p)) for p in folder.iterdir() if p.is_file())
                   for folder in (inputs["model"], mlp_model_dir)}
    result = vd(*(arg.format(**names) for arg in case.args))
    assert_one_line_error(result, case.fragment, case.code)
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), rel
    assert leftovers(tmp_path) == []
    assert {name: sha256(inputs[name]) for name in case.unchanged} == before
    assert {folder: sorted((p.name, sha256(p)) for p in folder.iterdir() if p.is_file())
            for folder in model_files} == model_files  # the models read are untouched
    if "one_process_run" in names:  # the run refused is untouched
        assert {p.name: sha256(p) for p in run.iterdir() if p.is_file()} == run_files


def test_a_broken_torch_install_is_one_line(inputs, tmp_path):
    """`--backend torch` where `import torch` itself fails (a half-finished upgrade, a missing library)."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise RuntimeError('libtorch_cpu.so: cannot open shared object')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), os.environ.get(
        "PYTHONPATH", "")])}
    result = cli("run", inputs["clip"], "--model", inputs["model"], "--backend", "torch", "--out",
                 tmp_path / "o.mp4", env=env)
    assert_one_line_error(result, "cannot be imported (RuntimeError: libtorch_cpu.so", 2)
    assert not (tmp_path / "o.mp4").exists()


def test_an_unexpected_error_is_one_line_with_a_debug_hint(vd, inputs, tmp_path, monkeypatch):
    """A bug (not a user error) still ends in one line; VAE_DEPLOY_DEBUG=1 shows the traceback."""
    from vae_deploy.video import jobs

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(jobs, "run_video", broken)
    result = vd("run", inputs["clip"], "--model", inputs["model"])
    assert_one_line_error(result, "unexpected ZeroDivisionError: a bug (rerun with VAE_DEPLOY_DEBUG=1", 1)
    monkeypatch.setenv("VAE_DEPLOY_DEBUG", "1")
    loud = vd("run", inputs["clip"], "--model", inputs["model"])
    assert loud.returncode == 1 and loud.stderr.startswith("Traceback"), loud.stderr
    assert "ZeroDivisionError: a bug\n" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == "error: unexpected ZeroDivisionError: a bug"


# ---------------------------------------------------------------- a full disk


FULL_DISK_CASES = [
    Case("run --out", ["run", "{clip}", "--model", "{model}", "--out", "{disk}/o.mp4"],
         "no space left on device", 1, absent=["o.mp4"]),
    Case("run --out image", ["run", "{clip}", "--model", "{model}", "--max-frames", "1", "--out",
                             "{disk}/o.png"], "no space left on device", 1, absent=["o.png"]),
    Case("run --latents", ["run", "{clip}", "--model", "{model}", "--latents", "{disk}/o.vaelat", "--size",
                           "128"], "no space left on device", 1, absent=["o.vaelat"]),
    Case("encode", ["encode", "{clip}", "--model", "{model}", "-o", "{disk}/o.vaelat", "--size", "128"],
         "no space left on device", 1, absent=["o.vaelat"]),
    Case("decode", ["decode", "{latents}", "--model", "{model}", "-o", "{disk}/o.mp4", "--fps", "25"],
         "no space left on device", 1, absent=["o.mp4"]),
    Case("export", ["export", "{mlp_checkpoint}", "--out", "{disk}/model", "--real", "0"],
         "no space left on device", 1, absent=["model"]),
    Case("export a diffusers folder", ["export", "{diffusers}", "--out", "{disk}/model", "--real", "0"],
         "no space left on device", 1, absent=["model"]),
    Case("train", ["train", "{recipe}", "--out", "{disk}/runs/tiny", "--max-steps", "2"],
         "no space left on device", 1, absent=["runs"]),
    Case("sample", ["sample", "{mlp_model_dir}", "-n", "1000", "--out", "{disk}/grid.png"],
         "no space left on device", 1, absent=["grid.png"]),
    Case("demo", ["demo", "--out-dir", "{disk}/demo", "-q"], "no space left on device", 1, absent=["demo"]),
    Case("slim", ["slim", "{model}", "--out", "{disk}/device"], "no space left on device", 1,
         absent=["device"]),
    # every video would fail alike: the batch stops with one line naming --out, and leaves no index
    Case("encode_dataset", ["encode-dataset", "{clip}", "--model", "{model}", "--workers", "1", "--size",
                            "128", "-q", "--out", "{disk}/lat"],
         "cannot write {disk}/lat: no space left on device", 1, absent=["lat"]),
    Case("encode_dataset --format webdataset", ["encode-dataset", "{clip}", "--model", "{model}", "--workers",
                                                "1", "--size", "128", "-q", "--format", "webdataset",
                                                "--out", "{disk}/lat"],
         "cannot write {disk}/lat: no space left on device", 1, absent=["lat"]),
    Case("run --report", ["run", "{clip}", "--model", "{model}", "--size", "128", "--report", "{disk}/rep"],
         "no space left on device", 1, absent=["rep"]),
    Case("train --nproc 2", ["train", "{recipe}", "--nproc", "2", "--out", "{disk}/runs/tiny", "--max-steps",
                             "2"], "no space left on device", None, absent=["runs"]),
]


@pytest.mark.parametrize("case", FULL_DISK_CASES, ids=[c.name for c in FULL_DISK_CASES])
def test_a_full_disk_fails_the_command_and_publishes_nothing(vd, inputs, mlp_checkpoint, mlp_model_dir,
                                                            tmp_path, case):
    with full_disk(tmp_path / "disk") as disk:
        names = {k: str(v) for k, v in inputs.items()} | {"disk": str(disk), "mlp_model_dir": str(
            mlp_model_dir), "mlp_checkpoint": str(mlp_checkpoint)}
        result = vd(*(arg.format(**names) for arg in case.args))
        assert result.returncode != 0, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr
        assert lines and lines[-1].startswith("error: "), result.stderr
        assert case.fragment.format(**names) in lines[-1].lower(), lines[-1]
        # The message names the output as given, never a temporary (".name.<random>") beside it.
        assert f"{disk}/." not in lines[-1], lines[-1]
        for rel in case.absent:
            assert not (disk / rel).exists(), rel
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no temporary, no empty folder


# ---------------------------------------------------------------- SIGTERM


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A video far too long to finish before the signal (at --size 512 the tiny model streams it at a few
    dozen frames/s)."""
    return write_video(tmp_path_factory.mktemp("long_clip") / "long.avi", 3000)


@pytest.fixture(scope="module")
def large_clip(tmp_path_factory) -> Path:
    """Large frames, so that a decoded output grows on disk from its first frame on (OpenCV buffers small
    ones), which tells the test that frames are being finished."""
    return write_video(tmp_path_factory.mktemp("large_clip") / "large.avi", 200, (640, 480))


def terminate_once_writing(args: list, folder: Path, min_bytes: int = 4096) -> subprocess.CompletedProcess:
    """Start `vae-deploy ARGS`, wait until a temporary output in `folder` holds `min_bytes` (frames are being
    finished), then send SIGTERM, as `docker stop` would."""
    process = subprocess.Popen([sys.executable, "-m", "vae_deploy", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(p.stat().st_size >= min_bytes for p in Path(folder).glob(".*") if p.is_file()):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def frames_kept(stderr: str) -> int:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("terminated (SIGTERM): ") and line.endswith(" frames done were kept"), stderr
    return int(line.split(": ")[1].split()[0])


def test_sigterm_during_run_keeps_the_finished_frames(inputs, long_clip, tmp_path):
    result = terminate_once_writing(["run", long_clip, "--model", inputs["model"], "--out",
                                     tmp_path / "o.mkv", "--latents", tmp_path / "o.vaelat", "--size", "512"],
                                    tmp_path)
    assert result.returncode == 143, result.stderr
    kept = frames_kept(result.stderr)
    assert 0 < kept < 3000
    assert open_source(tmp_path / "o.mkv").read().shape[0] == kept
    decoded = cli("decode", tmp_path / "o.vaelat", "--model", inputs["model"], "-o", tmp_path / "d.mkv")
    assert decoded.returncode == 0, decoded.stderr
    assert open_source(tmp_path / "d.mkv").read().shape[0] == kept
    assert leftovers(tmp_path) == []


def test_sigterm_during_encode_and_decode(inputs, large_clip, tmp_path):
    encoded = terminate_once_writing(["encode", large_clip, "--model", inputs["model"], "-o",
                                      tmp_path / "a.vaelat", "--size", "512"], tmp_path, min_bytes=3 * 2**20)
    assert encoded.returncode == 143, encoded.stderr
    kept = frames_kept(encoded.stderr)
    assert 0 < kept < 200
    decoded = terminate_once_writing(["decode", tmp_path / "a.vaelat", "--model", inputs["model"], "-o",
                                      tmp_path / "a.mkv"], tmp_path)
    assert decoded.returncode == 143, decoded.stderr
    done = frames_kept(decoded.stderr)
    assert 0 < done < kept
    assert open_source(tmp_path / "a.mkv").read().shape[0] == done
    assert leftovers(tmp_path) == []


def test_sigterm_before_the_first_frame_writes_nothing(inputs, long_clip, tmp_path):
    """Stopped once the outputs are open but (very likely) before a frame is finished: exit 143 either way;
    with no frame done nothing is published, else the frames done are."""
    result = terminate_once_writing(["run", long_clip, "--model", inputs["model"], "--out",
                                     tmp_path / "o.mkv", "--size", "512"], tmp_path, min_bytes=0)
    assert result.returncode == 143, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    if last == "terminated (SIGTERM): no output was written":
        assert not (tmp_path / "o.mkv").exists()
    else:
        assert open_source(tmp_path / "o.mkv").read().shape[0] == frames_kept(result.stderr)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- two writers on one output


def test_two_runs_writing_one_video_publish_one_complete_file(inputs, long_clip, tmp_path):
    target = tmp_path / "same.mkv"
    args = [sys.executable, "-m", "vae_deploy", "run", str(long_clip), "--model", str(inputs["model"]),
            "--out", str(target), "--size", "64", "--max-frames", "200", "-q"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert [code for code, _ in results] == [0, 0], results
    assert open_source(target).read().shape[0] == 200
    assert leftovers(tmp_path) == []


CORPUS_CLIPS, CORPUS_SIZE = 6, "96"  # the default model encodes one such clip in about a second here


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of copies of the packaged clip: a batch long enough to stop or join in the middle."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(CORPUS_CLIPS):
        shutil.copyfile(sample_video_path("carphone_pristine"), folder / f"clip{i}.mp4")
    return folder


def ok_outputs(out: Path) -> list[str]:
    """The outputs index.jsonl records as done (a torn last line is not counted)."""
    from vae_deploy.batch.index import read_index

    return sorted(o for o, e in read_index(out / "index.jsonl").items() if e.ok)


def start_encode_dataset(corpus: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vae_deploy", "encode-dataset", str(corpus), "--out",
                             str(out), "--workers", "1", "--size", CORPUS_SIZE, "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_during_encode_dataset_keeps_the_finished_videos_and_a_rerun_does_the_rest(corpus, tmp_path):
    out = tmp_path / "lat"
    process = start_encode_dataset(corpus, out)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and len(ok_outputs(out)) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == [f"terminated (SIGTERM): the videos finished are kept and listed in "
                                        f"{out / 'index.jsonl'}"], err
    assert leftovers(out) == []  # no staging or temporary file of the video in progress
    done = ok_outputs(out)
    assert 2 <= len(done) < CORPUS_CLIPS, done
    kept = {o: (os.stat(out / o).st_ino, os.stat(out / o).st_mtime_ns) for o in done}

    rerun = cli("encode-dataset", corpus, "--out", out, "--workers", "1", "--size", CORPUS_SIZE, "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == (f"encoded {CORPUS_CLIPS} of {CORPUS_CLIPS} videos "
                                    f"({len(done)} already done)")
    assert {o: (os.stat(out / o).st_ino, os.stat(out / o).st_mtime_ns) for o in done} == kept  # untouched
    assert ok_outputs(out) == sorted(f"clip{i}.vaelat" for i in range(CORPUS_CLIPS))
    redone = sorted(set(ok_outputs(out)) - set(done))
    serial = cli("encode", corpus / redone[0].replace(".vaelat", ".mp4"), "-o", tmp_path / "serial.vaelat",
                 "--size", CORPUS_SIZE, "-q")
    assert serial.returncode == 0, serial.stderr
    expected = (tmp_path / "serial.vaelat").read_bytes()  # every clip is the same video: the same bytes
    for output in ok_outputs(out):
        assert (out / output).read_bytes() == expected, output
    assert leftovers(out) == []


def test_a_full_disk_stops_a_batch_of_two_workers_at_once(corpus, tmp_path):
    """A real process (the workers' own stderr counts): the worker that hits the full disk stops the batch,
    the other is stopped in the middle of its video, and nobody waits for ever on the pool's locks (a worker
    whose interrupt became a disk-full error kept running and hung the batch, about one run in four)."""
    with full_disk(tmp_path / "disk") as disk:
        result = cli("encode-dataset", corpus, "--out", disk / "lat", "--workers", "2", "--size", CORPUS_SIZE,
                     "-q", timeout=120)
        assert_one_line_error(result, f"cannot write {disk / 'lat'}: no space left on device", 1)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_two_encode_datasets_on_one_out_one_encodes_all_the_other_fails_at_once(corpus, tmp_path):
    """The first holds DIR for its batch; the second, started while it runs, fails with one line naming the
    first's pid instead of compacting and appending the same index.jsonl (it does not wait: a batch can run
    for hours)."""
    out = tmp_path / "lat"
    first = start_encode_dataset(corpus, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not (out / "index.jsonl").exists():
        time.sleep(0.02)  # the first holds the lock from before it writes the index
    assert first.poll() is None, first.communicate()
    second = cli("encode-dataset", corpus, "--out", out, "--workers", "1", "--size", CORPUS_SIZE, "-q")
    still_running = first.poll() is None
    out_first, err_first = first.communicate(timeout=300)
    assert still_running  # the second ended while the first was encoding
    assert_one_line_error(second, f"another encode-dataset is writing to {out} (pid {first.pid})", 2)
    assert first.returncode == 0, err_first
    assert out_first.strip() == f"encoded {CORPUS_CLIPS} of {CORPUS_CLIPS} videos"
    lines = (out / "index.jsonl").read_text().splitlines()
    assert len(lines) == CORPUS_CLIPS  # one line per video: the second wrote none
    assert ok_outputs(out) == sorted(f"clip{i}.vaelat" for i in range(CORPUS_CLIPS))
    for output in ok_outputs(out):
        LatentReader(out / output)  # complete, checksum included
    assert leftovers(out) == []


def test_sigterm_during_training_keeps_the_finished_epochs(inputs, tmp_path):
    recipe = tmp_path / "long.toml"
    recipe.write_text(RECIPE.format(latent_dim=2).replace("epochs = 1", "epochs = 200"))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "vae_deploy", "train", str(recipe), "--out", str(out),
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM): finished work was kept"
    finished = len((out / "metrics.jsonl").read_text().splitlines())
    assert finished >= 1 and (out / "train_state.safetensors").is_file()
    assert leftovers(out) == []
    resumed = cli("train", recipe, "--out", out, "--resume", "--epochs", finished + 1, "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == finished + 1


# ---------------------------------------------------------------- encode-dataset: kill -9, reruns (issue 22)


def start_batch(corpus: Path, out: Path, *args) -> subprocess.Popen:
    """encode-dataset in a session of its own, so that a test that fails can end it and its workers."""
    return subprocess.Popen([sys.executable, "-m", "vae_deploy", "encode-dataset", str(corpus), "--out",
                             str(out), "--size", CORPUS_SIZE, "-q", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not condition():
        time.sleep(0.05)
    assert process.poll() is None and condition(), "the batch ended before the condition held"


def finish(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """The process's result once it exits; the whole session killed and the test failed when it does not
    exit within `timeout` seconds (a batch waiting for ever on a dead worker)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the batch was still running {timeout} s later")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_kill_9_of_an_encode_dataset_worker_ends_the_batch_in_seconds_keeping_the_finished(corpus, tmp_path):
    """The OOM killer's way: SIGKILL to one of two workers. The batch ends within seconds with one line
    naming the worker, the index keeps every finished video, nothing of the killed video is left, and a
    rerun does the rest. (multiprocessing.Pool replaced the worker, lost its video and waited for ever.)"""
    import psutil

    out = tmp_path / "lat"
    process = start_batch(corpus, out, "--workers", "2")
    wait_for(lambda: ok_outputs(out), process)
    workers = [p for p in psutil.Process(process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    workers[0].kill()
    killed = time.monotonic()
    result = finish(process, timeout=60)
    assert time.monotonic() - killed < 30
    assert_one_line_error(result, f"error: worker pid {workers[0].pid} died (signal 9, killed: out of "
                                  f"memory?) ", 1)
    assert result.stderr.strip().endswith("; finished videos are kept; rerun to continue"), result.stderr
    done = ok_outputs(out)
    assert 1 <= len(done) < CORPUS_CLIPS
    for output in done:
        LatentReader(out / output)  # whole, checksum included
    assert leftovers(out) == []
    rerun = cli("encode-dataset", corpus, "--out", out, "--workers", "2", "--size", CORPUS_SIZE, "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"encoded {CORPUS_CLIPS} of {CORPUS_CLIPS} videos ({len(done)} already " \
                                   f"done)"


def test_kill_9_of_a_ray_actor_ends_the_batch_in_one_line_after_the_other_finishes(corpus, tmp_path):
    """SIGKILL to one of two Ray actors: the other actor's video in progress is still recorded, the index is
    kept and the batch ends with one line and exit 1 (it was Ray's 8-line ActorDiedError, the other
    actor's video abandoned)."""
    pytest.importorskip("ray")
    import psutil

    out = tmp_path / "lat"
    process = start_batch(corpus, out, "--engine", "ray", "--workers", "2")
    wait_for(lambda: ok_outputs(out), process, timeout=180)
    actors = [p for p in psutil.Process(process.pid).children(recursive=True)
              if p.cmdline() and p.cmdline()[0].startswith("ray::_Actor")]
    assert len(actors) == 2, actors
    finished = len(ok_outputs(out))
    actors[0].kill()
    result = finish(process, timeout=120)
    assert_one_line_error(result, f"error: Ray actor pid {actors[0].pid} died (killed or crashed: out of "
                                  f"memory?) while encoding {corpus}", 1)
    assert finished < len(ok_outputs(out)) < CORPUS_CLIPS  # the other actor's video is in the index
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def small_clips(tmp_path_factory) -> Path:
    """Three short clips (a subfolder among them): a batch that takes a second or two."""
    folder = tmp_path_factory.mktemp("small_clips")
    (folder / "sub").mkdir()
    for i, name in enumerate(["a.avi", "b.avi", "sub/c.avi"]):
        write_video(folder / name, 6 + i, size=(48, 32))
    return folder


def test_encode_dataset_reruns_refuse_another_model_or_option_and_redo_a_replaced_source(inputs, small_clips,
                                                                                         tmp_path):
    """A rerun into the same --out with another model, --size, --chunk or --raw-latents is refused in one
    line naming the setting, the folder untouched (it used to add the other model's latents and count the
    rest as done). A source replaced by other frames, keeping its size and mtime, is encoded again."""
    clips, out = tmp_path / "clips", tmp_path / "lat"
    shutil.copytree(small_clips, clips)
    args = ["--out", out, "--workers", "1", "-q"]
    first = cli("encode-dataset", clips, "--model", inputs["model"], *args)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for other, says in [(["--model", inputs["causal"]], "latents made with the frame model "),
                        (["--model", inputs["model"], "--size", "64"], "made with no --size "),
                        (["--model", inputs["model"], "--chunk", "4"], "made with --chunk 8 "),
                        (["--model", inputs["model"], "--raw-latents"], "made with no --raw-latents ")]:
        refused = cli("encode-dataset", clips, *other, *args)
        assert_one_line_error(refused, says, 2)
        assert f"give another --out (or remove {out})" in refused.stderr
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # b.avi replaced by write_video's frames in reverse: another video of the same size, its mtime put back
    replaced = clips / "b.avi"
    stat = replaced.stat()
    ramp = np.linspace(0, 255, 48, dtype=np.float32)[None, :, None]
    writer = cv2.VideoWriter(str(replaced), cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 32))
    for i in reversed(range(7)):
        frame = (ramp + 3 * i + np.arange(3, dtype=np.float32) * 40) % 256
        writer.write(np.broadcast_to(frame, (32, 48, 3)).astype(np.uint8))
    writer.release()
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (replaced.stat().st_size, replaced.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    rerun = cli("encode-dataset", clips, "--model", inputs["model"], *args)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == "encoded 3 of 3 videos (2 already done)"
    serial = cli("encode", replaced, "--model", inputs["model"], "-o", tmp_path / "b.vaelat", "-q")
    assert serial.returncode == 0, serial.stderr
    assert (out / "b.vaelat").read_bytes() == (tmp_path / "b.vaelat").read_bytes() != before[out / "b.vaelat"]


def test_encode_dataset_rerun_into_a_folder_without_a_model_record_redoes_other_models_latents(
        inputs, small_clips, tmp_path):
    """A folder written before dataset.json named the model: the .vaelat headers do, and a rerun with
    another model encodes everything again instead of counting the other model's files as done."""
    out = tmp_path / "lat"
    first = cli("encode-dataset", small_clips, "--model", inputs["model"], "--out", out, "--workers", "1",
                "-q")
    assert first.returncode == 0, first.stderr
    (out / "dataset.json").write_text('{"format": "vaelat"}\n')
    rerun = cli("encode-dataset", small_clips, "--model", inputs["causal"], "--out", out, "--workers", "1",
                "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == "encoded 3 of 3 videos"
    kinds = {LatentReader(p).header.model_kind for p in out.rglob("*.vaelat")}
    assert kinds == {json.loads((out / "dataset.json").read_text())["model_kind"]} != {"frame"}


def test_sigterm_during_the_first_video_leaves_a_populated_out_as_it_was(corpus, tmp_path):
    """--out already held empty folders of the user's and a git repository: a batch stopped before any
    video finished removes only what it made (it removed every empty folder under --out) and does not name
    an index that does not exist."""
    out = tmp_path / "lat"
    (out / "keep" / "empty").mkdir(parents=True)
    (out / "logs").mkdir()
    made = subprocess.run(["git", "init", "-q", str(out)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    folders = sorted(p for p in out.rglob("*") if p.is_dir())
    assert [p for p in folders if not any(p.iterdir())]  # empty folders to lose, git's own among them
    sources = tmp_path / "sources"
    shutil.copytree(corpus, sources / "nested")  # the batch makes lat/nested/ for them
    process = start_batch(sources, out, "--workers", "1")
    wait_for(lambda: any(p.name.endswith(".part.vaelat") for p in (out / "nested").glob(".*")), process)
    process.send_signal(signal.SIGTERM)
    result = finish(process, timeout=120)
    assert result.returncode == 143, result.stderr
    if ok_outputs(out):  # (a video finished first on a fast machine)
        assert result.stderr.strip() == f"terminated (SIGTERM): the videos finished are kept and listed in " \
                                        f"{out / 'index.jsonl'}"
    else:
        assert result.stderr.strip() == "terminated (SIGTERM): no video was finished; nothing was written"
        assert sorted(p for p in out.rglob("*") if p.is_dir()) == folders  # lat/nested/ removed too
        assert sorted(p.name for p in out.iterdir()) == [".git", "keep", "logs"]
    assert all(p.is_dir() for p in folders)
    assert leftovers(out) == [".git"]


def test_kill_9_of_encode_dataset_then_a_rerun_leaves_no_temporary_file(corpus, tmp_path):
    """A batch killed outright (kill -9 of its session) leaves its video's temporary file, a hidden
    `.….part.vaelat` that rglob("*.vaelat") would count; the next batch on that --out removes it and
    nothing else, and completes."""
    out = tmp_path / "lat"
    process = start_batch(corpus, out, "--workers", "1")
    wait_for(lambda: ok_outputs(out) and leftovers(out), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    time.sleep(0.5)  # the worker, killed with its session, is gone
    assert leftovers(out), "no temporary file was left to clean"
    done = ok_outputs(out)
    rerun = cli("encode-dataset", corpus, "--out", out, "--workers", "1", "--size", CORPUS_SIZE, "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"encoded {CORPUS_CLIPS} of {CORPUS_CLIPS} videos ({len(done)} already " \
                                   f"done)"
    assert leftovers(out) == []
    assert sorted(p.name for p in out.rglob("*.vaelat")) == [f"clip{i}.vaelat" for i in range(CORPUS_CLIPS)]


# ---------------------------------------------------------------- issue 22: forged .vaelat sizes, fp16 overflow


def forged_latents(latents: Path, path: Path, source_size: list[int], **fit) -> Path:
    """`latents` with the header's source size (and fit fields) replaced; the checksum (of the latents,
    untouched) stays valid."""
    import struct

    data = latents.read_bytes()
    length = struct.unpack("<Q", data[-16:-8])[0]
    header = json.loads(data[-16 - length:-16])
    header["source_size"] = header["fit"]["source_size"] = source_size
    header["fit"].update(fit)
    text = json.dumps(header).encode()
    path.write_bytes(data[:-16 - length] + text + struct.pack("<Q", len(text)) + data[-8:])
    return path


@pytest.mark.parametrize("source_size, fit, fragment", [
    ([15000, 15000], {}, "source_size must be 2 integers (width, height) from 1 to 8192"),
    ([16384, 16384], {}, "source_size must be 2 integers (width, height) from 1 to 8192"),
    ([4000, 400], {}, "a 4000x400 source at short side 32 (snap) is fitted to 320x32"),
    ([176, 144], {"mode": "pad"}, "a 176x144 source at short side 32 (pad) is fitted to 39x32"),
], ids=["15000-square", "16384-square", "source-the-latents-cannot-make", "fit-mode-the-latents-cannot-make"])
def test_forged_sizes_in_a_vaelat_are_one_line_and_nothing_is_written(vd, inputs, tmp_path, source_size, fit,
                                                                      fragment):
    bad = forged_latents(inputs["latents"], tmp_path / "forged.vaelat", source_size, **fit)
    result = vd("decode", bad, "--model", inputs["model"], "-o", tmp_path / "o.mkv")
    assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forged.vaelat"]


def test_latents_overflowing_fp16_are_one_line_and_nothing_is_written(inputs, tiny_kl_model, tmp_path):
    """A normalization of scale 1e6 (latents_std 1e-6): encode, run --latents and encode-dataset refuse."""
    model = tmp_path / "model"
    shutil.copytree(tiny_kl_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    norm = manifest["preprocessing"]["latent_normalization"]
    norm["scale"] = [1e6] * len(norm["scale"])
    (model / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    out.mkdir()
    for args in (["encode", inputs["clip"], "-o", out / "o.vaelat"],
                 ["run", inputs["clip"], "--latents", out / "o.vaelat", "--out", out / "o.mp4"]):
        result = cli(*args, "--model", model, "--max-frames", "2")
        assert_one_line_error(result, "latents overflow fp16")
    batch = cli("encode-dataset", inputs["clip"], "--model", model, "--max-frames", "2", "--workers", "1",
                "-q", "--out", out / "lat")
    assert batch.returncode == 1 and "Traceback" not in batch.stderr, batch.stderr
    assert "latents overflow fp16" in (out / "lat" / "index.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["lat"] and not list(out.rglob("*.vaelat"))
    assert leftovers(out) == []


# ---------------------------------------------------------------- issue 22: nothing wrong, nothing lost

ISSUE_22_RECIPE = '[model]\nkind = "mlp"\n[data]\nkind = "mnist"\nsource = "mnist-5k"\n[train]\nlr = nan\n'


def _issue_22_case(name: str, root: Path, external_folder, tiny_video_model) -> tuple[list, str]:
    """(the command line, its error fragment) of an issue-22 case, its inputs made under `root`."""
    from safetensors.torch import load_file, save_file

    weights_file = "diffusion_pytorch_model.safetensors"
    changes = {  # a diffusers folder's weights that do not fill its config.json
        "missing weights": ("wan2.1", lambda w: [w.pop(k) for k in ("decoder.conv_in.weight",
                                                                    "decoder.conv_in.bias")],
                            "does not match config.json: 2 missing weights (decoder.conv_in.bias, "
                            "decoder.conv_in.weight)"),
        "extra weights": ("kl-sd", lambda w: w.__setitem__("bogus.weight", w["decoder.conv_out.bias"]),
                          "does not match config.json: 1 unexpected weight (bogus.weight)"),
        "misshapen weights": ("tiny", lambda w: w.__setitem__("encoder.layers.0.bias",
                                                              w["encoder.layers.0.bias"][:3]),
                              "does not match config.json: 1 weight of another shape (encoder.layers.0.bias "
                              "(3,) for (8,))"),
    }
    if name in changes:
        family, change, fragment = changes[name]
        source = shutil.copytree(external_folder(family), root / "src")
        weights = load_file(source / weights_file)
        change(weights)
        save_file({k: v.clone() for k, v in weights.items()}, source / weights_file)
        return ["export", source, "--out", root / "out" / "m"], fragment
    if name == "factory that exits":
        (root / "exiting_factory.py").write_text("import sys\n\n\ndef build():\n    sys.exit(0)\n")
        return (["export", "--from", "exiting_factory:build", "--out", root / "out" / "m"],
                "the factory called sys.exit(0) instead of returning a module")
    if name == "entry point named by a folder":
        folder = shutil.copytree(tiny_video_model("frame"), root / "model")
        config = json.loads((folder / "reference" / "config.json").read_text())
        config.update(kind="entry-point", model={"entry_point": "os:abort"})
        (folder / "reference" / "config.json").write_text(json.dumps(config))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["reference/config.json"] = sha256(folder / "reference" / "config.json")
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return (["verify", folder, "--reference", "torch", "--real", "0"],
                "(--from os:abort); vae-deploy imports it only when you name it")
    (root / "nan_lr.toml").write_text(ISSUE_22_RECIPE)
    return (["train", root / "nan_lr.toml", "--out", root / "out" / "run"],
            "lr must be a finite number, got nan")


@pytest.mark.parametrize("name", ["missing weights", "extra weights", "misshapen weights",
                                  "factory that exits", "entry point named by a folder", "non-finite lr"])
def test_issue_22_inputs_get_one_line_and_write_nothing(external_folder, tiny_video_model, tmp_path, name):
    """Each used to end in exit 0 (an export of half-random weights with parity passed, a factory's
    sys.exit(0)), a SIGABRT (verify calling the os:abort a folder named) or a training run of nan weights.
    Real processes: the os:abort case must not take the test process with it."""
    args, fragment = _issue_22_case(name, tmp_path, external_folder, tiny_video_model)
    before = {p.relative_to(tmp_path): sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = cli(*args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()
    assert {p.relative_to(tmp_path): sha256(p) for p in tmp_path.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- serve: a service, not a writer
#
# `vae-deploy serve` joins the table as a long-running process. Its rows: bad command lines (one line, nothing
# started, nothing written), SIGTERM (the chunk in flight answered, exit 0), kill -9 then a rerun on the same
# port, two servers on one port, and every hostile session (the issue's list: a malformed header, a wrong
# dtype or shape, an oversized message, a latent chunk from another model, a disconnect mid-chunk, too many
# sessions, a slow sender; and a missing token, an idle session) against one server for the whole module.
# A full disk: serve writes no files (no output, no cache, no log file; its one status line goes to stderr),
# so it has no full-disk row; the bad command lines check that nothing appears in their working folder.
# The packaged default model serves: no export for these rows.

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))  # serve_support: real servers on 127.0.0.1

SERVE_TOKEN = "s3cret"
SERVE_IDLE = 1.5  # --idle-timeout of the module's server (the slow sender and the idle session)

SERVE_USAGE_CASES = [  # Typer's bounds: the usage message and exit 2, as the usage mistakes above
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-sessions", "0"], "--max-sessions"),
    (["--max-wait-ms", "inf"], "--max-wait-ms"),  # a round would never end
    (["--max-wait-ms", "nan"], "--max-wait-ms"),
    (["--max-message-mb", "inf"], "--max-message-mb"),  # was an "unexpected OverflowError"
    (["--max-message-mb", "0"], "--max-message-mb"),
    (["--idle-timeout", "0"], "--idle-timeout"),
    (["--idle-timeout", "nan"], "--idle-timeout"),
    (["--max-frame-pixels", "0"], "--max-frame-pixels"),
    (["--max-chunk-frames", "0"], "--max-chunk-frames"),
]


@pytest.fixture(scope="module")
def default_model() -> Path:
    from vae_deploy.video.default_model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="module")
def serve_server(default_model):
    """One server for the module's hostile sessions: a token and small limits, the default model."""
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from serve_support import ServerProcess

    proc = ServerProcess(default_model, "--threads", "1", "--token", SERVE_TOKEN, "--max-sessions", "2",
                         "--max-message-mb", "0.25", "--max-frame-pixels", str(64 * 64), "--idle-timeout",
                         str(SERVE_IDLE))
    yield proc
    assert proc.stop() == 0, "\n".join(proc.lines)


def _serve_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return cli("serve", *args, timeout=60, cwd=cwd)


@pytest.mark.parametrize("args, fragment", [c for c in SERVE_USAGE_CASES],
                         ids=[" ".join(c[0]) for c in SERVE_USAGE_CASES])
def test_serve_bad_option_values_get_the_usage_message(default_model, tmp_path, args, fragment):
    result = _serve_cli(default_model, *args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and fragment in result.stderr and "Usage" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _serve_bad_input(name: str, tmp_path: Path, default_model: Path, mlp_model_dir) -> tuple[list, str]:
    if name == "no model folder":
        return [tmp_path / "nowhere", "--port", "0"], "model folder not found"
    if name == "a file as the model":
        return [default_model / "manifest.json", "--port", "0"], "is a file: serve takes a model folder"
    if name == "a folder without a manifest":
        (tmp_path / "empty").mkdir()
        return [tmp_path / "empty", "--port", "0"], "manifest.json is missing"
    if name == "an image model":
        return [mlp_model_dir(), "--port", "0"], "video model"
    if name == "a non-loopback host without --token":
        return [default_model, "--host", "0.0.0.0", "--port", "0"], "--token"
    if name == "an address that does not resolve":
        return [default_model, "--host", "no-such-host.invalid", "--token", "x", "--port", "0"], \
            "cannot listen on no-such-host.invalid:0"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["no model folder", "a file as the model", "a folder without a manifest",
                                  "an image model", "a non-loopback host without --token",
                                  "an address that does not resolve"])
def test_serve_bad_input_is_one_line_and_starts_nothing(default_model, request, tmp_path, name):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    args, fragment = _serve_bad_input(name, tmp_path, default_model,
                                      lambda: request.getfixturevalue("mlp_model_dir"))
    before = sorted(tmp_path.rglob("*"))
    result = _serve_cli(*args, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_two_servers_on_one_port_the_second_is_one_line_naming_it(serve_server, default_model, tmp_path):
    result = _serve_cli(default_model, "--port", str(serve_server.port), cwd=tmp_path)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{serve_server.port}")
    assert "in use" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert serve_server.http("/healthz")[0] == 200  # the first one still serves


def test_serve_sigterm_answers_the_chunk_in_flight_then_closes_and_exits_0(default_model):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    import threading

    from serve_support import ServerProcess, clip

    from vae_deploy.serve.client import ServerRefusal, connect
    from vae_deploy.video.latent_codec import LatentCodec
    from vae_deploy.video.model_open import ModelChoice, open_model

    # a lone chunk waits --max-wait-ms for others to join its round: a window to stop the server in
    proc = ServerProcess(default_model, "--threads", "1", "--max-batch", "4", "--max-wait-ms", "2500")
    try:
        session = connect(proc.url, "encode")
        frames = clip(7, 4)
        answer: dict = {}

        def send():
            try:
                answer["latents"] = session.encode(frames)
                session.encode(frames)  # after the stop: refused
            except ServerRefusal as err:
                answer["refusal"] = err

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.0)  # the chunk is in the server, waiting for its round
        proc.proc.terminate()
        time.sleep(0.2)
        with pytest.raises(ServerRefusal) as late:  # a new session during the stop
            connect(proc.url, "decode", timeout=10)
        assert (late.value.code, late.value.close_code) == ("shutting_down", 1001)
        sender.join(30)
        runner = open_model(ModelChoice(default_model, "ort-cpu", 1))
        try:
            assert answer["latents"].tobytes() == LatentCodec(runner).encode(frames).tobytes()
        finally:
            runner.close()
        assert (answer["refusal"].code, answer["refusal"].close_code) == ("shutting_down", 1001)
        assert proc.proc.wait(30) == 0, "\n".join(proc.lines)
        assert not any("Traceback" in line for line in proc.lines), proc.lines
    finally:
        proc.kill()


def test_serve_kill_9_then_a_rerun_on_the_same_port_serves(default_model):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from serve_support import ServerProcess, clip

    from vae_deploy.serve.client import connect

    first = ServerProcess(default_model, "--threads", "1")
    try:
        with connect(first.url, "encode") as session:
            expected = session.encode(clip(3, 2))
        held = connect(first.url, "encode")  # a session open at the kill
        held.encode(clip(3, 2))
        port = first.port
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        first.kill()
    held.close()
    rerun = ServerProcess(default_model, "--threads", "1", "--port", str(port))  # the same port
    try:
        assert rerun.port == port
        with connect(rerun.url, "encode") as session:  # from the zero state: the same latents
            assert session.encode(clip(3, 2)).tobytes() == expected.tobytes()
        _wait_for_no_serve_state(rerun)  # the server frees a session just after the client's end message
    finally:
        assert rerun.stop() == 0, "\n".join(rerun.lines)


# ------------------------------------------------ serve: hostile sessions (one server, a case per row)


def _raw_session(server, *messages: bytes) -> tuple[dict, int]:
    """Open a WebSocket, send `messages`, return the error header and the close code."""
    from websockets.sync.client import connect as ws_connect

    from vae_deploy.serve.protocol import unpack

    with ws_connect(server.url, open_timeout=10, compression=None) as ws:
        for m in messages:
            ws.send(m)
        header = {}
        try:
            while True:
                header, _ = unpack(ws.recv(timeout=10))
                if header["op"] == "error":
                    break
        finally:
            try:
                ws.recv(timeout=10)
            except Exception:  # noqa: BLE001 - the close frame ends the connection
                pass
        return header, ws.close_code


def _open_message(mode="encode", **extra) -> bytes:
    from vae_deploy.serve.protocol import pack

    return pack({"op": "open", "mode": mode, "token": SERVE_TOKEN, **extra})


def _refused(server, messages: dict[str, bytes], codes=("bad_chunk", "bad_message"), mode="encode") -> None:
    for what, message in messages.items():
        header, close = _raw_session(server, _open_message(mode), message)
        assert header["code"] in codes and close == 1007, (what, header)
        assert "\n" not in header["message"], (what, header)


def _malformed_header(server):
    from vae_deploy.serve.protocol import pack

    _refused(server, {
        "shorter than the header length": b"\x01\x00",
        "a header length beyond the message": b"\xff\x00\x00\x00{}",
        "a header that is not JSON": b"\x05\x00\x00\x00{bad}",
        "bytes after a header without dtype/shape": pack({"op": "chunk"}) + b"\x00" * 8,
    }, codes=("bad_message",))


def _wrong_dtype_or_shape(server):
    from serve_support import clip

    from vae_deploy.serve.protocol import pack

    frames, latents = clip(0, 2), np.zeros((1, 4, 8, 8), np.float16)
    _refused(server, {
        "float16 frames": pack({"op": "chunk"}, frames.astype(np.float16)),
        "a 3-D chunk": pack({"op": "chunk"}, frames[0]),
        "a wrong byte count": pack({"op": "chunk"}, frames)[:-4],
        "a frame beyond --max-frame-pixels": pack({"op": "chunk"}, clip(0, 2, size=72)),
        "a size not a multiple of 8": pack({"op": "chunk"}, frames[:, :, :60, :60]),
    })
    _refused(server, {
        "float32 latents": pack({"op": "chunk"}, latents.astype(np.float32)),
        "3-D latents": pack({"op": "chunk"}, latents[0]),
        "no latent frame": pack({"op": "chunk"}, latents[:0]),
        "a shape that does not match the bytes":
            pack({"op": "chunk", "dtype": "float16", "shape": [1, 4, 8, 9]}) + latents.tobytes(),
    }, mode="decode")


def _oversized_message(server):
    from serve_support import clip

    from vae_deploy.serve.client import ServerRefusal, connect

    big = clip(0, 4, size=128)  # 786 KB > 0.25 MiB
    with connect(server.url, "encode", token=SERVE_TOKEN) as session, pytest.raises(ServerRefusal) as refused:
        session.encode(big)
    assert refused.value.close_code == 1009  # "message too big", from the WebSocket layer itself


def _latents_of_another_model(server):
    from vae_deploy.serve.protocol import pack

    header, close = _raw_session(server, _open_message("decode"),
                                 pack({"op": "chunk"}, np.zeros((1, 3, 8, 8), np.float16)))
    assert (header["code"], close) == ("bad_chunk", 1007) and "channels" in header["message"]
    header, close = _raw_session(server, _open_message("decode", fingerprint="0" * 64))
    assert (header["code"], close) == ("wrong_model", 1007)


def _disconnect_mid_chunk(server):
    from serve_support import clip
    from websockets.sync.client import connect as ws_connect

    from vae_deploy.serve.protocol import pack

    for _ in range(3):
        ws = ws_connect(server.url, open_timeout=10, compression=None).__enter__()
        ws.send(_open_message())
        ws.recv(timeout=10)
        ws.send(pack({"op": "chunk"}, clip(0, 4)))
        ws.close()  # before the answer
        _wait_for_no_serve_state(server)  # the chunk in flight finishes, then its state is freed


def _too_many_sessions(server):
    from serve_support import clip, metric

    from vae_deploy.serve.client import ServerRefusal, connect

    a = connect(server.url, "encode", token=SERVE_TOKEN)
    b = connect(server.url, "decode", token=SERVE_TOKEN)
    with pytest.raises(ServerRefusal) as refused:
        connect(server.url, "encode", token=SERVE_TOKEN)
    assert (refused.value.code, refused.value.close_code) == ("too_many_sessions", 1013)
    assert "--max-sessions" in refused.value.message
    text = server.http("/metrics", {"Authorization": f"Bearer {SERVE_TOKEN}"})[1]
    assert metric(text, "vae_deploy_serve_refusals_total", reason="too_many_sessions") >= 1
    b.close()
    deadline = time.monotonic() + 10
    while server.json("/healthz")["sessions"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with connect(server.url, "encode", token=SERVE_TOKEN) as c:  # a slot freed: served
        assert c.encode(clip(0, 2)).shape == (2, 4, 8, 8)
    a.close()


def _slow_sender(server):
    """A client that trickles one chunk's message in fragments: the session waits for the whole message at
    most --idle-timeout (the timer runs until a whole message is in, not until the next byte), then refuses
    with 4408 and frees its state; a message trickled faster than that is served."""
    from serve_support import clip
    from websockets.sync.client import connect as ws_connect

    from vae_deploy.serve.protocol import pack, unpack

    message = pack({"op": "chunk"}, clip(0, 2))

    def trickle(pieces: int, pause: float):
        size = -(-len(message) // pieces)
        for start in range(0, len(message), size):
            yield message[start:start + size]
            time.sleep(pause)

    with ws_connect(server.url, open_timeout=10, compression=None) as ws:
        ws.send(_open_message())
        ws.recv(timeout=10)
        ws.send(trickle(4, 0.05))  # whole within 0.2 s: served
        assert unpack(ws.recv(timeout=10))[0]["op"] == "latents"
        began = time.monotonic()
        try:
            ws.send(trickle(40, 0.25))  # 10 s for one message: cut long before it ends
        except Exception:  # noqa: BLE001 - the server closed the connection under the send
            pass
        header, _ = unpack(ws.recv(timeout=10))
        assert header["code"] == "idle_timeout", header
        assert time.monotonic() - began < SERVE_IDLE + 5
    assert ws.close_code == 4408


def _no_token(server):
    from vae_deploy.serve.client import ServerRefusal, connect

    with pytest.raises(ServerRefusal) as refused:
        connect(server.url, "encode")
    assert (refused.value.code, refused.value.close_code) == ("unauthorized", 1008)
    assert server.http("/model")[0] == 401
    assert server.http("/model", {"Authorization": f"Bearer {SERVE_TOKEN}"})[0] == 200
    assert server.http("/healthz")[0] == 200  # a load balancer's probe needs no secret


def _idle_session(server):
    from serve_support import clip, metric

    from vae_deploy.serve.client import ServerRefusal, connect

    session = connect(server.url, "encode", token=SERVE_TOKEN)
    session.encode(clip(0, 2))
    assert server.json("/healthz")["streams"] == 1
    time.sleep(SERVE_IDLE + 0.5)
    _wait_for_no_serve_state(server)
    with pytest.raises(ServerRefusal) as refused:
        session.encode(clip(0, 2))
    assert refused.value.close_code == 4408
    session.close()
    text = server.http("/metrics", {"Authorization": f"Bearer {SERVE_TOKEN}"})[1]
    assert metric(text, "vae_deploy_serve_refusals_total", reason="idle_timeout") >= 1


SERVE_SESSION_CASES = {  # the issue's list first, then the token and the idle timeout
    "malformed header": _malformed_header,
    "wrong dtype or shape": _wrong_dtype_or_shape,
    "oversized message": _oversized_message,
    "a latent chunk from another model": _latents_of_another_model,
    "a disconnect mid-chunk": _disconnect_mid_chunk,
    "too many sessions": _too_many_sessions,
    "a slow sender": _slow_sender,
    "no token": _no_token,
    "an idle session": _idle_session,
}


def _wait_for_no_serve_state(server, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.json("/healthz")
        if health["streams"] == 0 and health["sessions"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"state left behind: {health}")


@pytest.mark.parametrize("case", list(SERVE_SESSION_CASES))
def test_a_hostile_serve_session_is_refused_and_the_server_keeps_serving(serve_server, case):
    """Each case ends its own session with an `error` message (a code, one line) and a close code; afterwards
    no session state is left on the server and a fresh session is served."""
    from serve_support import clip

    from vae_deploy.serve.client import connect

    SERVE_SESSION_CASES[case](serve_server)
    _wait_for_no_serve_state(serve_server)
    with connect(serve_server.url, "encode", token=SERVE_TOKEN) as session:
        assert session.encode(clip(0, 2)).dtype == np.float16
    _wait_for_no_serve_state(serve_server)
    assert serve_server.proc.poll() is None
