"""Bring your own VAE, end to end: tiny diffusers models (tests/external_zoo.py) saved with save_pretrained,
exported by `vae-deploy export` as a real process, then used the way users use them.

- Parity: the exported folder's ort-cpu runner streams a real clip chunk by chunk (several chunkings, the
  smallest the model allows among them) and must equal diffusers' own whole-clip encode/decode, computed
  here from a separately loaded `from_pretrained` model, within 1e-4 (fp32); `verify` agrees.
- The commands: run/encode/decode on clips of any length, bench, and the torch-free edge install.
- Bad input: each ends in one `error:` line and leaves no output behind; SIGTERM and a full disk while
  exporting a diffusers folder leave nothing (or the previous folder).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import external_zoo
import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, cli_process, invoke_main
from external_zoo import CONFIGS, KINDS, NAMES, WAN_GRAPHS, WAN_MODELS, load_theirs
from torch_free_support import edge_cli, edge_env

from vae_deploy.errors import InputShapeError
from vae_deploy.runtime import load_runner, read_manifest
from vae_deploy.runtime.latents import LatentReader
from vae_deploy.video.fit import fitted_clip
from vae_deploy.video.samples import sample_video_path

external_folder = external_zoo.external_folder  # the zoo's session fixtures, where pytest finds them
external_model = external_zoo.external_model

TOL = 1e-4  # streamed onnxruntime graphs against diffusers' whole clip, fp32
CLIP = sample_video_path("carphone_pristine")
SHORT_SIDE = 64  # the parity clip's working short side: 80x64 frames, a multiple of 8 and 16
CLIP_FRAMES = {"wan": 17, "frame": 8}  # Wan: 1 + 4 * 4
# Frames per encoder call along the stream; Wan's first entry holds its first frame (the first graph) and
# the rest of that chunk. [1, 4, ...] and [5, ...] are the smallest chunks Wan takes.
ENCODER_CHUNKS = {"wan": [[1, 4, 4, 4, 4], [5, 4, 4, 4], [9, 4, 4], [17]],
                  "frame": [[1] * 8, [3, 1, 4], [8]]}
DECODER_CHUNKS = {"wan": [[1, 1, 1, 1, 1], [3, 2], [5]], "frame": [[1] * 8, [5, 3]]}


def family(name: str) -> str:
    return "wan" if name in WAN_MODELS else "frame"


@pytest.fixture
def vd(capsys, monkeypatch):
    """`vae-deploy` through main() in this process (the same entry point, no process start)."""
    return lambda *args: invoke_main(monkeypatch, capsys, *args)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders an atomic writer left behind (they are named .<name>.…)."""
    return sorted(p.name for p in Path(folder).rglob(".*"))


def read_video(path: Path) -> np.ndarray:
    """Every frame OpenCV decodes from `path`, BGR uint8 (T, H, W, 3)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


# ---------------------------------------------------------------- parity: ORT streamed vs diffusers


@pytest.fixture(scope="module")
def diffusers_reference(external_model):
    """name -> (clip, mean, logvar | None, frames): a real clip fitted for the exported encoder, float32
    (1, T, 3, H, W) in [0, 1], and diffusers' own whole-clip results on it in the same layout, from a model
    loaded separately with `from_pretrained` (x = clip * 2 - 1; frames = (decode(mean).sample + 1) / 2)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            exported = external_model(name)
            encoder = read_manifest(exported.model_dir).graph("encoder")
            clip = fitted_clip(CLIP, encoder, CLIP_FRAMES[family(name)], short_side=SHORT_SIDE)
            assert clip.shape[1] == CLIP_FRAMES[family(name)], clip.shape
            theirs = load_theirs(name, exported.source)
            x = torch.from_numpy(clip) * 2 - 1
            with torch.no_grad():
                if name in WAN_MODELS:  # diffusers' video layout: NCTHW
                    dist = theirs.encode(x.permute(0, 2, 1, 3, 4)).latent_dist
                    mean, logvar = dist.mean, dist.logvar
                    frames = (theirs.decode(mean).sample + 1) / 2
                    mean, logvar, frames = (t.permute(0, 2, 1, 3, 4) for t in (mean, logvar, frames))
                else:  # frame VAEs: the clip's frames as diffusers' batch (NCHW)
                    encoded = theirs.encode(x[0])
                    if name == "tiny":
                        mean, logvar = encoded.latents, None
                    else:
                        mean, logvar = encoded.latent_dist.mean, encoded.latent_dist.logvar
                    frames = (theirs.decode(mean).sample + 1) / 2
                    mean, logvar, frames = (None if t is None else t[None] for t in (mean, logvar, frames))
            cache[name] = (clip, *(None if t is None else t.numpy() for t in (mean, logvar, frames)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_export_records_the_kind_the_graphs_and_the_latent_normalization(external_model, name):
    exported = external_model(name)
    assert f"wrote {exported.model_dir}" in " ".join(exported.export.stdout.split())
    manifest = read_manifest(exported.model_dir)
    class_name, config = CONFIGS[name]
    assert manifest.kind == KINDS[class_name]
    assert manifest.model["class_name"] == class_name
    assert set(manifest.graphs) == (WAN_GRAPHS if name in WAN_MODELS else {"encoder", "decoder"})
    if name in WAN_MODELS:
        assert manifest.graph("encoder").first_graph == "encoder_first"
        assert manifest.graph("decoder").first_graph == "decoder_first"
        assert all(manifest.graph(g).state for g in ("encoder", "decoder"))
        scale = [1 / s for s in config["latents_std"]]
        shift = config["latents_mean"]
    else:
        scale = [config.get("scaling_factor", 0.18215 if class_name == "AutoencoderKL" else 1.0)]
        scale *= config.get("latent_channels", 4)
        shift = [config.get("shift_factor", 0.0)] * len(scale)
    norm = manifest.preprocessing["latent_normalization"]
    assert norm["scale"] == pytest.approx(scale) and norm["shift"] == pytest.approx(shift)
    assert manifest.parity["passed"]


@pytest.mark.parametrize("name", NAMES)
def test_streamed_encoder_equals_diffusers_on_a_real_clip(external_model, diffusers_reference, name):
    clip, mean, logvar, _ = diffusers_reference(name)
    with load_runner(external_model(name).model_dir, "ort-cpu") as runner:
        for chunks in ENCODER_CHUNKS[family(name)]:
            stream, start, outs = runner.open_stream(), 0, []
            for k in chunks:
                outs.append(stream.step("encoder", clip[:, start:start + k]))
                start += k
            assert start == clip.shape[1]
            got = {key: np.concatenate([o[key] for o in outs], axis=1) for key in outs[0]}
            err = {"mean": max_abs(got["mu"], mean)}
            if logvar is not None:
                err["logvar"] = max_abs(got["logvar"], logvar)
            else:
                assert set(got) == {"mu"}  # AutoencoderTiny: a mean only
            print(f"{name} encoder, chunks {chunks}: {err}")
            assert max(err.values()) <= TOL, f"{name}, chunks {chunks}: {err}"


@pytest.mark.parametrize("name", NAMES)
def test_streamed_decoder_equals_diffusers_on_its_mean_latents(external_model, diffusers_reference, name):
    _, mean, _, frames = diffusers_reference(name)
    with load_runner(external_model(name).model_dir, "ort-cpu") as runner:
        for chunks in DECODER_CHUNKS[family(name)]:
            stream, start, outs = runner.open_stream(), 0, []
            for k in chunks:
                outs.append(stream.step("decoder", mean[:, start:start + k])["video"])
                start += k
            assert start == mean.shape[1]
            err = max_abs(np.concatenate(outs, axis=1), frames)
            print(f"{name} decoder, latent chunks {chunks}: {err:.2e}")
            assert err <= TOL, f"{name}, latent chunks {chunks}: {err}"


def data_outputs(model_dir: Path) -> list[str]:
    """graph/output of every data output of a model folder (state outputs excluded)."""
    manifest = read_manifest(model_dir)
    return [f"{g}/{t.name}" for g, spec in manifest.graphs.items() for t in spec.outputs
            if not t.name.startswith("present_")]


def verdicts(stdout: str) -> dict[str, list[str]]:
    """`verify`'s tables: output -> the verdict of each row ("ok" or "FAIL")."""
    found: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        title = re.match(r"^(\S+/\S+): \S+ vs \S+ \(", line)
        if title:
            current = found.setdefault(title.group(1), [])
        elif current is not None and line.startswith("│"):
            current.append(line.rstrip(" │").split("│")[-1].strip())
    return found


@pytest.mark.parametrize("name", NAMES)
def test_verify_passes_every_output_against_pytorch_and_as_json(vd, external_model, name):
    model_dir = external_model(name).model_dir
    # Random inputs at batch 1 only keep it quick (a Wan model's clip cases cost seconds in PyTorch); the
    # export checked the real frames and batch 2 already, and the golden check below replays them.
    # main() in this process like the other commands here: two `verify` processes (torch and diffusers
    # imports) were 7-12 CPU s a model.
    result = vd("verify", model_dir, "--real", 0, "--batch-sizes", 1)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[0] == "reference: PyTorch (the folder's reference/ checkpoint)"
    found = verdicts(result.stdout)
    for output in data_outputs(model_dir):
        assert found.get(output) and set(found[output]) == {"ok"}, (output, found.get(output))
    assert "parity ok" in result.stdout
    as_json = vd("verify", model_dir, "--json", "--reference", "golden")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["passed"] and report["reference"] == "golden"
    assert report["comparisons"] and all(c["passed"] for c in report["comparisons"])
    assert set(data_outputs(model_dir)) <= {f"{c['graph']}/{c['output']}" for c in report["comparisons"]}


# ---------------------------------------------------------------- the commands on an external model


def latent_header(path: Path):
    return LatentReader(path).header


@pytest.mark.parametrize(("frames", "raw"), [(10, False), (23, False), (10, True)])
def test_run_equals_encode_then_decode_on_wan_for_any_clip_length(vd, external_model, tmp_path, frames, raw):
    model = external_model("wan2.1").model_dir
    common = ["--model", model, "--max-frames", frames, "--size", SHORT_SIDE, "-q",
              *(["--raw-latents"] if raw else [])]
    ran = vd("run", CLIP, *common, "--out", tmp_path / "run.mkv", "--latents", tmp_path / "run.vaelat")
    assert ran.returncode == 0, ran.stderr
    encoded = vd("encode", CLIP, *common, "--out", tmp_path / "enc.vaelat")
    assert encoded.returncode == 0, encoded.stderr
    decoded = vd("decode", tmp_path / "enc.vaelat", "--model", model, "--out", tmp_path / "dec.mkv", "-q")
    assert decoded.returncode == 0, decoded.stderr
    for name in ("run.vaelat", "enc.vaelat"):
        header = latent_header(tmp_path / name)
        assert header.latent_space == ("raw" if raw else "normalized")
        assert header.frame_count == frames
        assert header.latent_frames == 1 + math.ceil((frames - 1) / 4)
    assert np.array_equal(LatentReader(tmp_path / "run.vaelat").latents,
                          LatentReader(tmp_path / "enc.vaelat").latents)
    from_run, from_decode = read_video(tmp_path / "run.mkv"), read_video(tmp_path / "dec.mkv")
    assert len(from_run) == len(from_decode) == frames
    for i, (a, b) in enumerate(zip(from_run, from_decode, strict=True)):
        assert np.array_equal(a, b), f"frame {i} of {frames}"
    assert leftovers(tmp_path) == []


def test_frame_stream_on_wan_codes_every_frame_and_stores_what_encode_stores(vd, external_model, tmp_path):
    """The embedding API (video/frames.py) on a first-rule model: its first chunk waits for 1 + chunk frames,
    every pushed frame comes back, and the latents equal the .vaelat `encode` writes for the same frames."""
    from vae_deploy.video.frames import FrameStream

    model, frames = external_model("wan2.1").model_dir, 23
    encoded = vd("encode", CLIP, "--model", model, "--max-frames", frames, "--size", SHORT_SIDE, "--chunk", 4,
                 "--out", tmp_path / "enc.vaelat", "-q")
    assert encoded.returncode == 0, encoded.stderr
    source = read_video(CLIP)[:frames][..., ::-1]  # BGR as OpenCV reads it -> RGB as FrameStream takes it
    latents, decoded, sizes = [], 0, []
    with FrameStream.open(model, frame_size=(176, 144), chunk=4, short_side=SHORT_SIDE) as stream:
        for frame in source:
            for chunk in stream.push(frame):
                latents.append(chunk.latents)
                decoded += len(chunk.frames)
                sizes.append(len(chunk.frames))
        for chunk in stream.flush():
            latents.append(chunk.latents)
            decoded += len(chunk.frames)
            sizes.append(len(chunk.frames))
    assert decoded == frames
    assert sizes[0] == 5  # the first rule's frame, then a chunk of 4
    assert np.array_equal(np.concatenate(latents), LatentReader(tmp_path / "enc.vaelat").latents)


def test_run_equals_encode_then_decode_on_a_frame_vae(vd, external_model, tmp_path):
    model = external_model("kl-sd").model_dir
    common = ["--model", model, "--max-frames", 5, "--size", SHORT_SIDE, "-q"]
    assert vd("run", CLIP, *common, "--out", tmp_path / "run.mkv").returncode == 0
    assert vd("encode", CLIP, *common, "--out", tmp_path / "enc.vaelat").returncode == 0
    decoded = vd("decode", tmp_path / "enc.vaelat", "--model", model, "--out", tmp_path / "dec.mkv", "-q")
    assert decoded.returncode == 0, decoded.stderr
    header = latent_header(tmp_path / "enc.vaelat")
    assert (header.latent_space, header.frame_count, header.latent_frames) == ("normalized", 5, 5)
    assert header.latent_shape == [4, 8, 10]  # 80x64 frames at 8x
    from_run, from_decode = read_video(tmp_path / "run.mkv"), read_video(tmp_path / "dec.mkv")
    assert from_run.shape == from_decode.shape == (5, 144, 176, 3)  # back at the source's size
    assert np.array_equal(from_run, from_decode)


@pytest.mark.parametrize("name", ["kl-sd", "tiny", "wan2.1"])
def test_bench_times_the_streamed_graphs(vd, external_model, name):
    result = vd("bench", external_model(name).model_dir, "--size", 32, "--chunk", 4, "--repeats", 2,
                "--warmup", 1)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["encoder", "decoder"], result.stdout
    assert "frames/s" in result.stdout and "(1, 4, 3, 32, 56)" in result.stdout


# ---------------------------------------------------------------- the edge install: no torch


def test_torch_is_blocked_in_the_edge_processes():
    blocked = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                             env=edge_env(), timeout=120)
    assert blocked.returncode != 0 and "blocked: edge install test" in blocked.stderr


@pytest.mark.parametrize("name", ["tiny", "wan2.1"])
def test_an_exported_diffusers_model_runs_and_verifies_without_torch(external_model, tmp_path, name):
    model = external_model(name).model_dir
    common = ["--model", model, "--max-frames", 6, "--size", SHORT_SIDE, "-q"]
    ran = edge_cli("run", CLIP, *common, "--out", tmp_path / "run.mkv")
    assert ran.returncode == 0, ran.stderr
    encoded = edge_cli("encode", CLIP, *common, "--out", tmp_path / "enc.vaelat")
    assert encoded.returncode == 0, encoded.stderr
    decoded = edge_cli("decode", tmp_path / "enc.vaelat", "--model", model, "--out", tmp_path / "dec.mkv",
                       "-q")
    assert decoded.returncode == 0, decoded.stderr
    assert np.array_equal(read_video(tmp_path / "run.mkv"), read_video(tmp_path / "dec.mkv"))
    assert len(read_video(tmp_path / "run.mkv")) == 6
    verified = edge_cli("verify", model)
    assert verified.returncode == 0, verified.stderr
    # the process could not import torch, so the reference had to be the golden outputs
    first_line = verified.stdout.splitlines()[0]
    assert first_line == "reference: golden outputs stored at export (torch not installed)"
    found = verdicts(verified.stdout)
    for output in data_outputs(model):
        assert found.get(output) and set(found[output]) == {"ok"}, (output, found.get(output))


# ---------------------------------------------------------------- bad input: one line, nothing written


def assert_nothing_written(tmp_path: Path, keep: set[str]) -> None:
    """Only the inputs the test made are in tmp_path: no output folder, no temporary."""
    assert {p.name for p in tmp_path.iterdir()} == keep
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("class_name", ["AutoencoderKLCogVideoX", "UNet2DConditionModel"])
def test_export_of_a_class_it_does_not_adapt_lists_the_supported_ones(vd, external_folder, tmp_path,
                                                                      class_name):
    source = shutil.copytree(external_folder("kl-sd"), tmp_path / "src")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "_class_name": class_name}))
    result = vd("export", source, "--out", tmp_path / "out" / "m")
    assert_one_line_error(result, f"holds a '{class_name}', which vae-deploy does not adapt", 2)
    assert "supported: AutoencoderKL, AutoencoderKLWan, AutoencoderTiny" in result.stderr
    assert_nothing_written(tmp_path, {"src"})


def test_export_of_a_diffusers_folder_without_weights(vd, external_folder, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(external_folder("kl-sd") / "config.json", source / "config.json")
    result = vd("export", source, "--out", tmp_path / "m")
    assert_one_line_error(result, "has a config.json but no weights", 2)
    assert_nothing_written(tmp_path, {"src"})


def test_export_of_a_diffusers_folder_with_corrupt_weights(vd, external_folder, tmp_path):
    source = shutil.copytree(external_folder("kl-sd"), tmp_path / "src")
    (source / "diffusion_pytorch_model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    result = vd("export", source, "--out", tmp_path / "m")
    assert_one_line_error(result, "cannot load", 2)
    assert "as a diffusers AutoencoderKL" in result.stderr
    assert_nothing_written(tmp_path, {"src"})


CONFIG_CASES = [
    # (diffusers folder, config.json changes, message fragment)
    ("kl-sd", {"_class_name": ["AutoencoderKL"]},
     "holds a ['AutoencoderKL'], which vae-deploy does not adapt"),
    ("kl-sd", {"block_out_channels": [8, 8]}, "cannot load {src} as a diffusers AutoencoderKL: list index"),
    ("kl-sd", {"latent_channels": 8},
     "{src}/diffusion_pytorch_model.safetensors does not match config.json: 7 weights of another shape "
     "(decoder.conv_in.weight (16, 4, 3, 3) for (16, 8, 3, 3), encoder.conv_out.bias (8,) for (16,), "),
    ("kl-sd", {"scaling_factor": "big"},
     "config.json has values vae-deploy cannot use (ValueError: could not convert string to float: 'big')"),
    ("wan2.1", {"latents_std": [0.0, 1.0, 1.0, 1.0]},
     "config.json has values vae-deploy cannot use (ZeroDivisionError"),
]


@pytest.mark.parametrize(("name", "changes", "fragment"), CONFIG_CASES,
                         ids=["class name a list", "blocks of two lengths", "weights of another config",
                              "scaling factor a word", "a latents_std of 0"])
def test_export_of_a_diffusers_folder_with_a_config_it_cannot_use(vd, external_folder, tmp_path, name,
                                                                   changes, fragment):
    source = shutil.copytree(external_folder(name), tmp_path / "src")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, **changes}))
    result = vd("export", source, "--out", tmp_path / "out" / "m")
    assert_one_line_error(result, fragment.format(src=source), 2)
    assert_nothing_written(tmp_path, {"src"})


WEIGHTS = "diffusion_pytorch_model.safetensors"


def drop(*keys):
    return lambda weights, other: [weights.pop(k) for k in keys]


def add_unused(weights, other):
    weights["decoder.bogus.weight"] = torch.zeros(3)


def reshape(key, shape):
    return lambda weights, other: weights.__setitem__(key, torch.zeros(shape))


def take_others(weights, other):
    weights.clear()
    weights.update(other)


# (diffusers folder, how its weights change, the message after "<file> does not match config.json: ");
# take_others: the weights of the other KL layout (kl-sd's under kl-sd3's config, saved under another one)
WEIGHT_CASES = [
    ("wan2.1", drop("decoder.conv_in.weight", "decoder.conv_in.bias"),
     "2 missing weights (decoder.conv_in.bias, decoder.conv_in.weight)"),
    ("wan2.1", add_unused, "1 unexpected weight (decoder.bogus.weight)"),
    ("wan2.1", reshape("decoder.conv_in.bias", (3,)), "1 weight of another shape (decoder.conv_in.bias (3,) "
                                                      "for (16,))"),
    ("kl-sd", drop("decoder.conv_out.bias"), "1 missing weight (decoder.conv_out.bias)"),
    ("tiny", add_unused, "1 unexpected weight (decoder.bogus.weight)"),
    ("kl-sd3", take_others, "4 unexpected weights (post_quant_conv.bias, post_quant_conv.weight, "
                            "quant_conv.bias, ...); 3 weights of another shape (decoder.conv_in.weight "
                            "(16, 4, 3, 3) for (16, 16, 3, 3), encoder.conv_out.bias (8,) for (32,), "),
]


@pytest.mark.parametrize(("name", "change", "fragment"), WEIGHT_CASES,
                         ids=["wan missing", "wan extra", "wan misshapen", "kl missing", "tiny extra",
                              "kl weights of another config"])
def test_export_of_weights_that_do_not_fill_the_config_names_the_first_keys(vd, external_folder, tmp_path,
                                                                            name, change, fragment):
    """diffusers leaves a missing (or misshapen) weight random and ignores an extra one, with a warning
    vae-deploy silences; parity then passes against that same model. The export must refuse instead."""
    from safetensors.torch import load_file, save_file

    source = shutil.copytree(external_folder(name), tmp_path / "src")
    weights = load_file(source / WEIGHTS)
    change(weights, load_file(external_folder("kl-sd") / WEIGHTS))
    save_file(weights, source / WEIGHTS)
    result = vd("export", source, "--out", tmp_path / "out" / "m")
    assert_one_line_error(result, f"{source / WEIGHTS} does not match config.json: {fragment}", 2)
    assert_nothing_written(tmp_path, {"src"})


def test_export_of_a_bin_only_folder_prints_no_diffusers_noise(external_folder, tmp_path):
    """A valid folder saved as .bin (no safetensors): diffusers, left to guess the file, logged "An error
    occurred while trying to fetch ..." though nothing was wrong; a real error still shows."""
    source = tmp_path / "src"
    external_zoo.build("tiny").save_pretrained(str(source), safe_serialization=False)
    assert sorted(p.name for p in source.iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    result = cli_process("export", source, "--out", tmp_path / "m", "--real", "0", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    state = torch.load(source / "diffusion_pytorch_model.bin", weights_only=True)
    del state["decoder.layers.0.weight"]
    torch.save(state, source / "diffusion_pytorch_model.bin")
    broken = cli_process("export", source, "--out", tmp_path / "m2", "--real", "0", timeout=300)
    assert_one_line_error(broken, "diffusion_pytorch_model.bin does not match config.json: 1 missing weight "
                                  "(decoder.layers.0.weight)", 2)


FACTORIES = '''\
import torch
from torch import nn


def raising():
    raise RuntimeError("no weights here")


def not_a_module():
    return 42


class NoDecode(nn.Module):
    in_channels, latent_channels, spatial_factor = 3, 4, 8

    def encode(self, x):
        return x[:, :, ::8, ::8].repeat(1, 2, 1, 1)[:, :4], x[:, :, ::8, ::8].repeat(1, 2, 1, 1)[:, :4]


def no_decode():
    return NoDecode()


class MeanOnly(NoDecode):
    """Its encoder gives a mean only, but it does not say has_logvar = False."""

    def encode(self, x):
        return super().encode(x)[0]

    def decode(self, z):
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=8.0)


def mean_only():
    return MeanOnly()


def exits_ok():
    import sys
    sys.exit(0)


def exits_3():
    raise SystemExit(3)


class ExitsWhenTraced(MeanOnly):
    has_logvar = False

    def decode(self, z):
        raise SystemExit(0)


def exits_when_traced():
    return ExitsWhenTraced()
'''
EXITS_ON_IMPORT = "import sys\nsys.exit(0)\n"

FROM_CASES = [
    ("no colon", ["--from", "user_factories"], "must be 'package.module:factory'"),
    ("a module that does not import", ["--from", "no_such_module_xyz:build"],
     "cannot import no_such_module_xyz (ModuleNotFoundError"),
    ("a missing attribute", ["--from", "user_factories:nothing"], "user_factories has no nothing"),
    ("a factory that raises", ["--from", "user_factories:raising"],
     "the factory raised RuntimeError: no weights here"),
    ("a factory returning no module", ["--from", "user_factories:not_a_module"],
     "the factory returned a int, not a torch module"),
    ("a module lacking decode", ["--from", "user_factories:no_decode"], "is a frame VAE without decode"),
    ("a mean-only encoder that keeps has_logvar", ["--from", "user_factories:mean_only"],
     "encode gave a mean only; a module whose encoder has no logvar sets has_logvar = False"),
    ("both SOURCE and --from", ["{source}", "--from", "user_factories:no_decode"],
     "give either a SOURCE folder or --from"),
    ("neither SOURCE nor --from", [], "give the model to export"),
    # sys.exit() in user code, with any code, fails the export instead of ending it (0 read as success)
    ("a factory calling sys.exit(0)", ["--from", "user_factories:exits_ok"],
     "--from user_factories:exits_ok: the factory called sys.exit(0) instead of returning a module"),
    ("a factory raising SystemExit(3)", ["--from", "user_factories:exits_3"],
     "the factory called sys.exit(3)"),
    ("a module calling sys.exit on import", ["--from", "exits_on_import:build"],
     "--from exits_on_import:build: importing exits_on_import called sys.exit(0)"),
    ("a module calling sys.exit when traced", ["--from", "user_factories:exits_when_traced"],
     "the model's code called sys.exit(0) during the export; nothing was written"),
]


@pytest.mark.parametrize("args,fragment", [c[1:] for c in FROM_CASES], ids=[c[0] for c in FROM_CASES])
def test_export_from_an_entry_point_that_is_wrong(vd, external_folder, tmp_path, monkeypatch, request, args,
                                                  fragment):
    code = tmp_path / "code"
    code.mkdir()
    (code / "user_factories.py").write_text(FACTORIES)
    (code / "exits_on_import.py").write_text(EXITS_ON_IMPORT)
    monkeypatch.syspath_prepend(str(code))
    for name in ("user_factories", "exits_on_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # each test imports its own copy
        request.addfinalizer(lambda name=name: sys.modules.pop(name, None))
    source = str(external_folder("kl-sd"))
    result = vd("export", *(a.format(source=source) for a in args), "--out", tmp_path / "out" / "m")
    assert_one_line_error(result, fragment, 2)
    assert_nothing_written(tmp_path, {"code"})


@pytest.mark.parametrize(("name", "size", "multiple"),
                         [("kl-sd", 30, 8), ("tiny", 36, 8), ("wan2.2", 40, 16)])
def test_frames_off_the_models_multiple_are_refused_by_the_runner(external_model, name, size, multiple):
    frames = 1 if name in WAN_MODELS else 2
    with load_runner(external_model(name).model_dir, "ort-cpu") as runner:
        with pytest.raises(InputShapeError, match=rf"height a multiple of {multiple}, got shape"):
            runner.open_stream().step("encoder", np.zeros((1, frames, 3, size, size), np.float32))


@pytest.mark.parametrize("fit", ["pad", "snap"])
def test_an_odd_sized_image_folder_runs_through_the_fit(vd, external_model, tmp_path, fit):
    folder = tmp_path / "odd"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (29, 37, 3), dtype=np.uint8))
    result = vd("run", folder, "--model", external_model("kl-sd").model_dir, "--fit", fit, "--size", 0,
                "--out", tmp_path / "o.mkv", "--latents", tmp_path / "o.vaelat", "-q")
    assert result.returncode == 0, result.stderr
    header = latent_header(tmp_path / "o.vaelat")
    assert header.source_size == [37, 29] and header.fit["mode"] == fit
    assert header.working_size == ([37, 29] if fit == "pad" else [40, 32])  # snap resizes to the multiple
    assert header.fit["model_size"] == [40, 32] and header.latent_shape == [4, 4, 5]
    video = read_video(tmp_path / "o.mkv")
    # Frames go back to 37x29; OpenCV's FFmpeg writer then stores even sizes only (here for FFV1 too).
    assert video.shape[0] == 3 and video.shape[1] in (28, 29) and video.shape[2] in (36, 37)


@pytest.fixture(scope="module")
def zero_frame_video(tmp_path_factory) -> Path:
    """A valid AVI container with a header and no frame (OpenCV's writer opened and closed)."""
    path = tmp_path_factory.mktemp("zero_frames") / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    assert writer.isOpened()
    writer.release()
    assert path.stat().st_size > 0
    return path


@pytest.mark.parametrize("command", ["run", "encode"])
@pytest.mark.parametrize("source", ["empty folder", "zero-frame video"])
def test_a_clip_without_frames_is_one_line(vd, external_model, zero_frame_video, tmp_path, command, source):
    if source == "empty folder":
        clip, fragment = tmp_path / "empty", "has no images"
        clip.mkdir()
    else:
        clip, fragment = zero_frame_video, "has no frames that OpenCV can decode"
    out = tmp_path / "out" / ("o.mkv" if command == "run" else "o.vaelat")
    result = vd(command, clip, "--model", external_model("wan2.1").model_dir, "--out", out, "-q")
    assert_one_line_error(result, fragment, 2)
    assert_nothing_written(tmp_path, {"empty"} if source == "empty folder" else set())


@pytest.mark.parametrize("decoder", ["wan2.1", "default"])
def test_latents_of_another_model_are_refused(vd, external_model, tmp_path, decoder):
    latents = tmp_path / "kl.vaelat"
    made = vd("encode", CLIP, "--model", external_model("kl-sd").model_dir, "--max-frames", 2, "--size", 32,
              "--out", latents, "-q")
    assert made.returncode == 0, made.stderr
    model = ["--model", external_model(decoder).model_dir] if decoder != "default" else []
    result = vd("decode", latents, *model, "--out", tmp_path / "o.mkv", "-q")
    assert_one_line_error(result, "was encoded by another model (diffusers-autoencoder-kl", 2)
    assert_nothing_written(tmp_path, {"kl.vaelat"})


# ---------------------------------------------------------------- SIGTERM while exporting a diffusers folder


@pytest.mark.parametrize("previous", [False, True], ids=["new folder", "over a previous folder"])
def test_sigterm_while_exporting_a_diffusers_folder_leaves_nothing_new(external_folder, external_model,
                                                                       tmp_path, previous):
    # The smallest diffusers folder of the zoo (AutoencoderTiny): its staged encoder.onnx appears after the
    # imports and one small graph, where kl-sd's took twice the CPU time for the same stop. The previous
    # folder is another model's export (kl-sd's), so the new export could not have written its bytes.
    target = tmp_path / "m"
    manifest_bytes = None
    if previous:
        shutil.copytree(external_model("kl-sd").model_dir, target)
        manifest_bytes = (target / "manifest.json").read_bytes()
    args = ["export", external_folder("tiny"), "--out", target, *(["--force"] if previous else [])]
    process = subprocess.Popen([sys.executable, "-m", "vae_deploy", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline, staged = time.monotonic() + 300, []
    while not staged and process.poll() is None and time.monotonic() < deadline:
        # Signal once the new folder is half built: a graph written, no manifest yet.
        staged = [p for p in tmp_path.glob(".m.*") if (p / "encoder.onnx").exists()]
        time.sleep(0.01)
    assert staged, "the export never showed a staging folder beside the target"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("terminated")
    if previous:
        assert (target / "manifest.json").read_bytes() == manifest_bytes
        read_manifest(target)  # every file still matches the previous manifest
        assert [p.name for p in tmp_path.iterdir()] == ["m"]
    else:
        assert list(tmp_path.iterdir()) == []
