"""Video training: the shipped recipes load, each video kind trains a few real steps on real clips (and
Moving MNIST), `evaluate` streams the test clip through the step form and reports what the full-sequence
reconstruction gives, writes the side-by-side video and the strip, resume continues exactly, and
train.max_minutes ends a run."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, invoke_main
from PIL import Image
from rich.console import Console
from training_helpers import one_thread

from vae_deploy.errors import ConfigError, ModelFormatError
from vae_deploy.models.checkpoint import load_model, load_state
from vae_deploy.models.streaming import pad_time
from vae_deploy.training.config import load_recipe, recipe_from_dict
from vae_deploy.training.evaluation import evaluate_run
from vae_deploy.training.run_folder import RunFolder
from vae_deploy.training.tasks import build_task
from vae_deploy.training.trainer import train
from vae_deploy.training.video_evaluation import STRIP_FRAMES, latent_compression, stream_reconstruct
from vae_deploy.video.metrics import VideoMetrics, psnr
from vae_deploy.video.sources import open_source

ROOT = Path(__file__).resolve().parents[2]
QUIET = Console(quiet=True)

# Tiny models (a few thousand weights) so a step takes milliseconds; causal3d with temporal stride 2, so
# the evaluation also exercises the stream's buffering and end padding (11 frames, chunks of 3).
TINY_MODELS = {
    "frame": {"kind": "frame", "channels": 8, "fine_channels": 8, "blocks_per_level": 0},
    "temporal": {"kind": "temporal", "window": 3, "d_model": 8, "heads": 2, "layers": 1,
                 "frame": {"channels": 8, "fine_channels": 8, "blocks_per_level": 0}},
    "causal3d": {"kind": "causal3d", "temporal_downsample": 2, "latent_channels": 8, "channels": 8,
                 "fine_channels": 8, "blocks_per_level": 0},
}
EVAL_FRAMES = 11
TINY_DATA = {"kind": "video", "short_side": 32, "crop": 32, "clip_len": 4, "clips_per_epoch": 4,
             "valid_crop": 32, "max_frames": 12, "eval_chunk": 3, "eval_max_frames": EVAL_FRAMES}


def tiny_video_recipe(kind: str = "frame", epochs: int = 1, data: dict | None = None, **train_options):
    return recipe_from_dict({
        "model": copy.deepcopy(TINY_MODELS[kind]),
        "data": {**TINY_DATA, **(data or {})},
        "train": {"epochs": epochs, "batch_size": 2, "device": "cpu", "kl_weight": 0.005, **train_options},
    }, name=f"tiny_{kind}")


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`vae-deploy ARGS` through the real entry point, in this process (no torch import per call)."""
    result = invoke_main(monkeypatch, capsys, *args)
    return result.returncode, result.stdout, result.stderr


# ------------------------------------------------------------------------------------------ the recipes

VIDEO_RECIPES = {"video_frame": "frame", "video_transformer": "temporal", "video_causal3d": "causal3d"}


@pytest.mark.parametrize("stem, kind", sorted(VIDEO_RECIPES.items()))
def test_video_recipes_load_with_the_issue_settings(stem, kind):
    from vae_deploy.models.registry import build_model

    recipe = load_recipe(ROOT / "train" / f"{stem}.toml")
    assert (recipe.model_kind, recipe.data_kind, recipe.name) == (kind, "video", stem)
    assert recipe.data.train == ["bikes", "bigbuckbunny"] and recipe.data.test == ["carphone_pristine"]
    assert recipe.data.valid == [] and recipe.data.valid_share == 0.15  # validation: the training clips' ends
    assert recipe.data.short_side == 128
    t = recipe.train
    assert t.threads in (1, 2) and t.max_minutes is not None and t.max_minutes <= 28
    assert 1e-4 <= t.kl_weight <= 1e-2
    model = build_model(recipe.model_kind, recipe.model)
    assert latent_compression(model, 128, 128) >= 24  # the issue's compression floor


def test_the_temporal_recipes_start_from_the_frame_recipe_and_differ_only_in_model_and_batching():
    """Both temporal designs start from the FrameVAE run (train.init_from) with its exact widths, and use the
    same data, loss, lr curve shape (a 100x cosine decay) and time budget; steps, clip shape, peak lr and
    threads may differ."""
    frame, *others = (load_recipe(ROOT / "train" / f"{stem}.toml").to_dict() for stem in VIDEO_RECIPES)
    varies = ("batch_size", "epochs", "lr", "lr_final", "threads", "init_from")
    frame_model = {k: v for k, v in frame["model"].items() if k != "kind"}
    for other in others:
        assert other["train"]["init_from"] == "runs/video_frame" and frame["train"]["init_from"] is None
        assert {k: v for k, v in other["train"].items() if k not in varies} == \
               {k: v for k, v in frame["train"].items() if k not in varies}
        assert other["train"]["lr"] / other["train"]["lr_final"] == pytest.approx(100)
        # same frames per step: 32 single frames, 8 clips x 4 frames or 4 clips x 8 frames
        assert other["train"]["batch_size"] * other["data"]["clip_len"] == \
               frame["train"]["batch_size"] * frame["data"]["clip_len"]
        same = ("train", "valid", "valid_share", "test", "short_side", "extra_short_sides", "crop", "flip",
                "valid_crop")
        assert {k: other["data"][k] for k in same} == {k: frame["data"][k] for k in same}
        shared = other["model"].get("frame", other["model"])  # temporal nests the FrameVAE config
        assert {k: shared[k] for k in frame_model} == frame_model


def test_the_default_model_recipes_are_the_transformer_design_on_a_gpu_trained_frame_vae():
    """train/default_frame.toml + train/default_model.toml (the packaged model): the models of
    train/video_frame.toml and train/video_transformer.toml, the same clips, with dark borders, larger crops,
    on a GPU; the Transformer stage starts from the frame stage's run."""
    frame = load_recipe(ROOT / "train" / "default_frame.toml").to_dict()
    model = load_recipe(ROOT / "train" / "default_model.toml").to_dict()
    assert frame["model"] == load_recipe(ROOT / "train" / "video_frame.toml").to_dict()["model"]
    assert model["model"] == load_recipe(ROOT / "train" / "video_transformer.toml").to_dict()["model"]
    assert model["train"]["init_from"] == "runs/default_frame"
    for recipe in (frame, model):
        data = recipe["data"]
        assert data["train"] == ["bikes", "bigbuckbunny"] and data["test"] == ["carphone_pristine"]
        assert data["valid"] == [] and data["valid_share"] == 0.15
        assert data["dark_borders"] == 0.25 and data["crop"] >= 112 and recipe["train"]["device"] == "cuda"
        assert recipe["train"]["lr"] / recipe["train"]["lr_final"] == pytest.approx(100)
    assert model["train"]["kl_weight"] < frame["train"]["kl_weight"]


def test_the_default_model_recipes_run_as_a_chain_on_the_cpu_when_asked(monkeypatch, capsys, tmp_path):
    """The packaged model's recipes ask for CUDA: here that is one clear line; with --device cpu (the
    README's advice) both stages take a step, the second starting from the first's weights."""
    frame, model = ROOT / "train" / "default_frame.toml", ROOT / "train" / "default_model.toml"
    if not torch.cuda.is_available():
        result = invoke_main(monkeypatch, capsys, "train", str(frame), "--out", str(tmp_path / "gpu"),
                             "--max-steps", "1")
        assert_one_line_error(result, "device 'cuda' asked for, but torch sees no CUDA GPU here", code=2)
    # --threads 1 instead of the recipes' 2 (a GPU machine's host threads): the suite runs a test per core,
    # where a second thread only spins against the other worker (measured on a busy 2-core machine, CPU-s
    # of this test: 26.4 and 29.7 with 2 threads, 22.0, 26.2 and 27.7 with 1); one_thread gives this
    # process its thread count back afterwards.
    with one_thread():
        for recipe, out, extra in ((frame, "frame", ()),
                                   (model, "model", ("--init-from", tmp_path / "frame"))):
            code, _, stderr = run_cli(monkeypatch, capsys, "train", recipe, "--out", tmp_path / out,
                                      "--device", "cpu", "--max-steps", "1", "--threads", "1", *extra)
            assert code == 0, stderr
            assert (tmp_path / out / "model.safetensors").is_file()
    stored = json.loads((tmp_path / "model" / "config.json").read_text())["recipe"]
    assert stored["name"] == "default_model" and stored["train"]["init_from"] == str(tmp_path / "frame")


ALL_VIDEO_RECIPES = [*sorted(VIDEO_RECIPES), "default_frame", "default_model"]


@pytest.mark.parametrize("stem", ALL_VIDEO_RECIPES)
def test_the_video_recipes_validate_on_the_ends_of_their_training_clips_and_test_on_carphone(stem):
    """Each recipe's task (its own clip length, burn-in and crops; the extra scales left out to save time):
    validation clips are center clips of the last 15% of bikes (38 frames) and bigbuckbunny (20), at
    least two per video; carphone_pristine is the test set and is neither trained nor validated on."""
    from dataclasses import replace

    from vae_deploy.training.tasks.video import VideoClipsTask

    recipe = load_recipe(ROOT / "train" / f"{stem}.toml")
    data = replace(recipe.data, extra_short_sides=[])
    task = VideoClipsTask(data, recipe.train, torch.device("cpu"))
    names = [Path(n.split(" (")[0]).name for n in task.valid_set.names]
    assert names == ["bikes.mp4", "bigbuckbunny.mp4"]
    assert [n.split(" (")[1] for n in task.valid_set.names] == ["frames 212-249, held out)",
                                                               "frames 112-131, held out)"]
    assert [v.shape[0] for v in task.train_set.videos] == [212, 112]
    frames = data.burn_in + data.clip_len
    assert task.valid_clips.shape[1:] == (frames, 3, data.valid_crop, data.valid_crop)
    assert task.valid_clips.shape[0] == 38 // frames + 20 // frames >= 4
    assert [Path(n).name for n in task.test_set.names] == ["carphone_pristine.mp4"]
    assert next(task.test_batches()).shape[1:] == (frames, 3, data.valid_crop, data.valid_crop)


def test_moving_mnist_recipe_loads():
    recipe = load_recipe(ROOT / "train" / "moving_mnist.toml")
    assert (recipe.data_kind, recipe.data.canvas, recipe.data.num_digits, recipe.data.seq_len) == \
           ("moving_mnist", 64, 2, 20)
    assert recipe.model.frame.in_channels == recipe.data.channels == 1
    assert recipe.train.threads == 1 and recipe.train.max_minutes <= 28


# ------------------------------------------------------------------------------------------ train + evaluate


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny epoch (2 steps) of each video kind on the real clips. Read-only."""
    runs = {}
    for kind in TINY_MODELS:
        out = tmp_path_factory.mktemp(f"video_{kind}") / "run"
        result = train(tiny_video_recipe(kind), out, console=QUIET)
        assert (result.epochs_done, result.steps) == (1, 2)
        runs[kind] = out
    return runs


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_training_writes_the_run_folder(trained_runs, kind):
    run = trained_runs[kind]
    for name in ("model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl"):
        assert (run / name).is_file(), name
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 0 and record["steps"] == 2
    # the "mse" part is the recon sum over the number of values per clip: per-value MSE (divided in float32
    # per batch before the float64 sums, hence float32 rounding)
    assert record["valid_mse"] == pytest.approx(record["valid_recon"] / (4 * 3 * 32 * 32), rel=1e-6)
    assert 0 < record["valid_mse"] < 1 and record["valid_kl"] > 0
    model, config = load_model(run)
    assert model.kind == kind and config["recipe"]["data"]["kind"] == "video"


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_evaluate_prints_metrics_and_writes_video_and_strip(trained_runs, kind, tmp_path, monkeypatch,
                                                            capsys):
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", trained_runs[kind], "--out", out,
                                   "--device", "cpu")
    assert code == 0, stderr
    for words in ("psnr", "ssim", "flicker", "compression_ratio", "fps", "carphone_pristine"):
        assert words in stdout, words
    video, strip = out / "side_by_side_carphone_pristine.mp4", out / "strip_carphone_pristine.png"
    assert f"side_by_side_carphone_pristine: {video}" in stdout.replace("\n", "")
    with open_source(video) as source:
        frames = source.read()
    # every held-out frame, source | reconstruction: 32x32 each (short side 32, center crop to x8)
    assert frames.shape == (EVAL_FRAMES, 32, 64, 3)
    # the strip: a row of STRIP_FRAMES source frames over their reconstructions (make_grid, padding 2)
    assert Image.open(strip).size == (STRIP_FRAMES * 34 + 2, 2 * 34 + 2)
    report = json.loads((out / "report.json").read_text())
    (clip,) = report["clips"]
    assert (clip["name"], clip["frames"], clip["height"], clip["width"]) == ("carphone_pristine", EVAL_FRAMES,
                                                                             32, 32)
    assert report["compression_ratio"] == clip["compression_ratio"]
    assert report["psnr"] == clip["psnr"] and report["fps"] > 0
    # raw uint8 RGB over fp16 latent bytes; causal3d's latent frame stands for 2 frames
    factor = 2 if kind == "causal3d" else 1
    latent = TINY_MODELS[kind].get("latent_channels", 4)
    assert clip["compression_ratio"] == pytest.approx(32 * 32 * 3 * factor / (2 * latent * 4 * 4))
    # the report page and its two videos (video/report.py), the per-frame numbers it plots in the JSON
    page = out / "report_carphone_pristine" / "report.html"
    assert f"report_carphone_pristine: {page}" in stdout.replace("\n", "")
    for name in ("source.mp4", "decoded.mp4"):
        with open_source(page.parent / name) as source:
            assert source.read().shape == (EVAL_FRAMES, 32, 32, 3)
    assert [len(clip["per_frame"][k]) for k in ("psnr", "ssim", "flicker")] == [EVAL_FRAMES] * 3
    assert f"{clip['psnr']:.2f}" in page.read_text()


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_evaluation_stream_equals_full_sequence_reconstruction(trained_runs, kind, tmp_path):
    """The chunked stream (chunks of 3, causal3d padded at the end) reconstructs exactly what the
    full-sequence encode -> mu -> decode does, and the reported metrics are those of that reconstruction."""
    model, config = load_model(trained_runs[kind])
    recipe = recipe_from_dict(config["recipe"])
    task = build_task(recipe.data_kind, recipe.data, recipe.train, torch.device("cpu"))
    (clip,) = task.eval_clips(model)
    assert clip.video.shape == (1, EVAL_FRAMES, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        padded = pad_time(clip.video, model.temporal_factor)
        full = model.decode(model.encode(padded)[0])[0, :EVAL_FRAMES]
    pieces = list(stream_reconstruct(model, clip.video, chunk=3))
    sources = torch.cat([s for s, _, _ in pieces])
    recons = torch.cat([r for _, r, _ in pieces])
    assert torch.equal(sources, clip.video[0])
    assert (recons - full).abs().max().item() <= 1e-5

    report, files = task.evaluate_extra(model, tmp_path, seed=0)
    hwc = full.permute(0, 2, 3, 1).numpy()
    source = clip.video[0].permute(0, 2, 3, 1).numpy()
    assert report["clips"][0]["psnr"] == pytest.approx(psnr(source, hwc), abs=1e-3)
    expected = VideoMetrics()
    expected.update(source, hwc)
    assert report["clips"][0]["ssim"] == pytest.approx(expected.ssim, abs=1e-4)
    assert report["clips"][0]["flicker"] == pytest.approx(expected.flicker, abs=1e-5)
    assert sorted(files) == ["report_carphone_pristine", "side_by_side_carphone_pristine",
                             "strip_carphone_pristine"]


def test_evaluate_json_from_a_real_process(trained_runs, tmp_path):
    """--threads replaces the recipe's thread count for the timed stream (runs are then timed alike)."""
    out = tmp_path / "eval"
    recipe_threads = load_model(trained_runs["frame"])[1]["recipe"]["train"]["threads"]
    threads = 2 if recipe_threads != 2 else 1
    result = subprocess.run([sys.executable, "-m", "vae_deploy", "evaluate", str(trained_runs["frame"]),
                             "--json", "--out", str(out), "--device", "cpu", "--threads", str(threads)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clips"][0]["frames"] == EVAL_FRAMES and np.isfinite(report["psnr"])
    assert report["stream"]["chunk"] == 3 and report["stream"]["temporal_factor"] == 1
    assert report["stream"]["threads"] == threads
    assert Path(report["pictures"]["side_by_side_carphone_pristine"]).is_file()


# ------------------------------------------------------------------------------------------ burn-in


@pytest.mark.parametrize("kind", ["temporal", "causal3d"])
def test_burn_in_frames_only_set_up_the_state(trained_runs, kind):
    """With data.burn_in = 2 the loss of a 2 + 4 frame clip is the loss of its last 4 frames, decoded with
    the state that its first 2 frames left: built here from the full-sequence paths (causal, so the clip
    part of a full pass is what the stream gives), drawing the sampling noise in the same order."""
    model, config = load_model(trained_runs[kind])
    recipe = recipe_from_dict({**config["recipe"], "data": {**config["recipe"]["data"], "burn_in": 2}})
    task = build_task(recipe.data_kind, recipe.data, recipe.train, torch.device("cpu"))
    task.check_model(model)
    batch = next(task.train_batches(torch.Generator().manual_seed(3)))
    assert batch.shape[1] == 2 + 4
    model.eval()
    torch.manual_seed(0)
    total, parts, n = task.loss(model, batch)

    burn = 2 // model.temporal_factor  # latent frames of the burn-in
    torch.manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        noise_burn = torch.randn_like(mu[:, :burn])  # warm_state's draw, then the clip's
        noise_clip = torch.randn_like(mu[:, burn:])
        z = mu + torch.cat([noise_burn, noise_clip], dim=1) * torch.exp(logvar / 2)
        recon = model.decode(z)[:, 2:]
        clip = batch[:, 2:]
        sse = ((recon - clip) ** 2).sum()
        kl = -0.5 * torch.sum(1 + logvar[:, burn:] - mu[:, burn:] ** 2 - logvar[:, burn:].exp())
    assert n == batch.shape[0]
    assert parts["recon"].item() == pytest.approx(sse.item(), rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert total.item() == pytest.approx(sse.item() + 0.005 * kl.item(), rel=1e-5)
    assert parts["mse"].item() == pytest.approx(sse.item() / clip[0].numel(), rel=1e-5)


def test_burn_in_run_trains_and_validates_on_the_clip_frames(tmp_path):
    result = train(tiny_video_recipe("causal3d", data={"burn_in": 2}), tmp_path / "run", console=QUIET)
    assert (result.epochs_done, result.steps) == (1, 2)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # validation clips: 2 + 4 frames of the 12 decoded, the loss on 4 (32x32 RGB)
    assert record["valid_mse"] == pytest.approx(record["valid_recon"] / (4 * 3 * 32 * 32), rel=1e-6)
    with pytest.raises(ConfigError, match="data.burn_in 1 must be a multiple of the model.s temporal"):
        train(tiny_video_recipe("causal3d", data={"burn_in": 1}), tmp_path / "bad", console=QUIET)


# ------------------------------------------------------------------------------ resume, time budget


def test_resume_of_a_video_run_continues_exactly(tmp_path):
    """2 epochs, then --resume to 3: the same weights and metrics as 3 epochs in one go (the random crops,
    windows and flips all come from the checkpointed generator)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_video_recipe("temporal", epochs=3), straight, console=QUIET)
    train(tiny_video_recipe("temporal", epochs=2), resumed, console=QUIET)
    result = train(tiny_video_recipe("temporal", epochs=3), resumed, resume=True, console=QUIET)
    assert (result.epochs_done, result.steps) == (3, 6)
    lines = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines, reference, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["valid_loss"] == b["valid_loss"]
    a, b = (load_state(RunFolder(run).state)["model"] for run in (resumed, straight))
    assert sorted(a) == sorted(b) and len(a) > 10
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_from_the_cli_continues_the_video_run(trained_runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs["frame"], run)
    recipe = tmp_path / "tiny_frame.toml"
    recipe.write_text(_toml(tiny_video_recipe("frame").to_dict()))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "train", recipe, "--out", run, "--resume",
                                   "--epochs", "2")
    assert code == 0, stderr
    assert f"{run}: 2 epochs, 4 steps" in stdout
    assert "epoch 1 (2/2)" in stderr and "epoch 0 (1/2)" not in stderr
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_init_from_on_the_command_line(trained_runs, tmp_path, monkeypatch, capsys):
    """--init-from overrides train.init_from; a folder that holds no model is one line and exit 2."""
    recipe = tmp_path / "tiny_temporal.toml"
    recipe.write_text(_toml(tiny_video_recipe("temporal").to_dict()))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "train", recipe, "--out", tmp_path / "run",
                                   "--init-from", trained_runs["frame"])
    assert code == 0, stderr
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["train"]
    assert stored["init_from"] == str(trained_runs["frame"])
    result = invoke_main(monkeypatch, capsys, "train", str(recipe), "--out", str(tmp_path / "other"),
                         "--init-from", str(tmp_path / "empty"))
    assert_one_line_error(result, f"train.init_from: {tmp_path / 'empty'} is not a checkpoint folder", code=2)
    assert not (tmp_path / "other" / "model.safetensors").exists()


def _toml(tables: dict) -> str:
    """A recipe dict as TOML (flat tables and one nested level: all the tiny recipes need)."""
    def value(v):
        return json.dumps(v)  # strings, numbers, booleans and lists of them are the same in TOML

    lines = []
    for table in ("model", "data", "train"):
        nested = {k: v for k, v in tables[table].items() if isinstance(v, dict)}
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in tables[table].items() if v is not None and k not in nested]
        for name, sub in nested.items():
            lines.append(f"[{table}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in sub.items() if v is not None]
    return "\n".join(lines) + "\n"


def test_max_minutes_ends_the_epoch_early_and_stops(tmp_path):
    """A budget spent during the first step: that epoch ends after it, is validated and saved, and
    training stops there instead of running the 5 epochs."""
    result = train(tiny_video_recipe("frame", epochs=5, max_minutes=1e-4), tmp_path / "run", console=QUIET)
    assert result.stopped_at_max_steps and (result.epochs_done, result.steps, result.best_epoch) == (1, 1, 0)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["steps"] == 1 and np.isfinite(record["valid_loss"])
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_lr_final_follows_a_cosine_over_all_steps_and_resumes_on_it(tmp_path):
    """lr 2e-3 -> 2e-5 over 2 epochs x 2 steps: the lr set before step k (0-based) is the cosine at k / 3."""
    def lr_at(k: int) -> float:
        return 2e-5 + (2e-3 - 2e-5) * 0.5 * (1 + np.cos(np.pi * k / 3))

    def stored_lr(run: Path) -> float:
        (group,) = load_state(RunFolder(run).state)["optimizer"]["param_groups"]
        return group["lr"]

    options = {"lr": 2e-3, "lr_final": 2e-5}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_video_recipe("frame", epochs=2, **options), straight, console=QUIET)
    assert stored_lr(straight) == pytest.approx(2e-5, rel=1e-12)  # the last step ran at lr_final
    train(tiny_video_recipe("frame", epochs=2, max_steps=2, **options), resumed, console=QUIET)
    assert stored_lr(resumed) == pytest.approx(lr_at(1), rel=1e-12)
    train(tiny_video_recipe("frame", epochs=2, **options), resumed, resume=True, console=QUIET)
    a, b = (load_state(RunFolder(run).state)["model"] for run in (resumed, straight))
    assert all(torch.equal(a[name], b[name]) for name in a)
    with pytest.raises(ConfigError, match="lr_final must be between 0 and lr"):
        tiny_video_recipe(lr=1e-3, lr_final=2e-3)


def test_max_minutes_may_change_on_resume(tmp_path):
    train(tiny_video_recipe("frame", epochs=1, max_minutes=10.0), tmp_path / "run", console=QUIET)
    result = train(tiny_video_recipe("frame", epochs=2, max_minutes=20.0), tmp_path / "run", resume=True,
                   console=QUIET)
    assert result.epochs_done == 2


# ------------------------------------------------------------------------- held-out ends (data.valid_share)

SHARE_DATA = {"valid": [], "valid_share": 0.25, "test": ["carphone_pristine"], "max_frames": 16}


def test_a_run_validates_on_the_held_out_ends_and_evaluates_the_test_clip(tmp_path):
    """valid_share 0.25 of 16 decoded frames: the last 4 of bikes and of bigbuckbunny are the two
    validation clips (frame for frame, center-cropped), training windows come from the first 12, and the
    test loss and `evaluate` measure carphone_pristine (4 clips of 4 of its 16 frames)."""
    from vae_deploy.data.video import load_video
    from vae_deploy.video.samples import sample_video_path

    recipe = tiny_video_recipe("frame", data=SHARE_DATA)
    task = build_task(recipe.data_kind, recipe.data, recipe.train, torch.device("cpu"))
    assert [v.shape[0] for v in task.train_set.videos] == [12, 12]
    assert task.valid_clips.shape == (2, 4, 3, 32, 32)
    for clip, name in zip(task.valid_clips, ("bikes", "bigbuckbunny"), strict=True):
        tail = torch.from_numpy(load_video(sample_video_path(name), 32, 16)[12:]).permute(0, 3, 1, 2)
        x0 = (tail.shape[-1] - 32) // 2
        assert torch.equal((clip * 255).round().to(torch.uint8), tail[..., x0:x0 + 32])
    result = train(recipe, tmp_path / "run", console=QUIET)
    assert (result.epochs_done, result.steps) == (1, 2)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(record["valid_loss"])
    report = evaluate_run(tmp_path / "run", out_dir=tmp_path / "eval", device="cpu")
    assert report["test_samples"] == 4
    assert [c["name"] for c in report["clips"]] == ["carphone_pristine"]
    assert report["clips"][0]["frames"] == EVAL_FRAMES


def test_held_out_ends_too_short_for_burn_in_and_clip_are_one_line(tmp_path, monkeypatch, capsys):
    """2 burn-in frames + 4: the 4 held-out frames of each 16 cannot make one validation clip."""
    recipe = tmp_path / "short.toml"
    recipe.write_text(_toml(tiny_video_recipe("frame", data={**SHARE_DATA, "burn_in": 2}).to_dict()))
    result = invoke_main(monkeypatch, capsys, "train", str(recipe), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "valid_share 0.25 holds out its last 4 of 16 frames, fewer than the "
                                  "validation clip length 6 (raise valid_share)")
    assert "bikes.mp4" in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_valid_may_be_empty_only_with_valid_share_and_then_test_is_named():
    with pytest.raises(ConfigError, match="valid must name at least one video, unless valid_share"):
        tiny_video_recipe(data={"valid": []})
    with pytest.raises(ConfigError, match="test must name the videos `evaluate` measures when valid names "
                                          "none"):
        tiny_video_recipe(data={"valid": [], "valid_share": 0.25})
    with pytest.raises(ConfigError, match="carphone_pristine is in both valid and test"):
        tiny_video_recipe(data={"test": ["carphone_pristine"]})


# ------------------------------------------------------------------------------------------ Moving MNIST


def test_moving_mnist_trains_and_evaluates(tmp_path):
    recipe = recipe_from_dict({
        "model": {"kind": "temporal", "window": 3, "d_model": 8, "heads": 2, "layers": 1,
                  "frame": {"in_channels": 1, "latent_channels": 2, "downsample": 4, "channels": 8,
                            "fine_channels": 8, "blocks_per_level": 0}},
        "data": {"kind": "moving_mnist", "clip_len": 4, "seq_len": 6, "canvas": 32, "sequences_per_epoch": 4,
                 "valid_sequences": 3, "eval_sequences": 3, "eval_chunk": 4},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu", "kl_weight": 0.005},
    }, name="tiny_mm")
    result = train(recipe, tmp_path / "run", console=QUIET)
    assert (result.epochs_done, result.steps) == (1, 2)
    # validation picks the epoch on train-split digits in sequences training never draws; the test loss
    # and `evaluate` use test-split digits (as before this split, so their numbers did not change)
    from vae_deploy.data.moving_mnist import MovingMnist
    from vae_deploy.training.tasks.moving_mnist import TEST_SEED_OFFSET, VALID_SEED_OFFSET

    task = build_task(recipe.data_kind, recipe.data, recipe.train, torch.device("cpu"))
    assert task.valid_clips.shape == task.test_clips.shape == (3, 6, 1, 32, 32)
    assert not any(torch.equal(v[0], t[0]) for v in task.valid_clips for t in task.test_clips)
    seed, generator = recipe.data.seed, recipe.data._generator_config
    test = MovingMnist(generator("test", 3, 6, seed + 1_000_003))  # the sequences evaluate always used
    assert TEST_SEED_OFFSET == 1_000_003 and torch.equal(task.test_clips, test.batch(range(3)))
    valid = MovingMnist(generator("train", 3, 6, seed + VALID_SEED_OFFSET))
    assert torch.equal(task.valid_clips, valid.batch(range(3)))
    assert VALID_SEED_OFFSET not in (0, TEST_SEED_OFFSET)  # other sequences than training's and the test's
    report = evaluate_run(tmp_path / "run", out_dir=tmp_path / "eval", device="cpu")
    assert report["test_samples"] == 3
    assert [c["name"] for c in report["clips"]] == ["seq000", "seq001", "seq002"]
    assert all(c["frames"] == 6 and c["channels"] == 1 and 0 < c["ssim"] <= 1 for c in report["clips"])
    # 32x32 gray over fp16 8x8x2 latents
    assert report["compression_ratio"] == pytest.approx(32 * 32 / (2 * 8 * 8 * 2))
    # videos, strips and report pages of the first two sequences only
    assert sorted(p for p in report["pictures"] if p != "loss_curves") == [
        "report_seq000", "report_seq001", "side_by_side_seq000", "side_by_side_seq001", "strip_seq000",
        "strip_seq001"]
    with open_source(tmp_path / "eval" / "side_by_side_seq000.mp4") as source:
        assert source.read().shape == (6, 32, 64, 3)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("model, data, message", [
    ({"kind": "mlp"}, {}, "is not a video model"),
    (TINY_MODELS["frame"], {"crop": 28}, "multiples of the model's spatial factor 8"),
    (TINY_MODELS["causal3d"], {"clip_len": 3}, "must be a multiple of the model's temporal factor 2"),
    ({**TINY_MODELS["frame"], "in_channels": 1}, {}, "takes 1 channels, the video data has 3"),
])
def test_a_model_that_cannot_take_the_clips_is_refused(tmp_path, model, data, message):
    recipe = recipe_from_dict({"model": copy.deepcopy(model), "data": {**TINY_DATA, **data},
                               "train": {"device": "cpu"}})
    with pytest.raises(ConfigError, match=message):
        train(recipe, tmp_path / "run", console=QUIET)


def test_bad_video_data_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown key data.crops"):
        tiny_video_recipe(data={"crops": 32})
    with pytest.raises(ConfigError, match="valid_crop must be at least 1"):
        tiny_video_recipe(data={"valid_crop": 0})
    with pytest.raises(ConfigError, match="max_minutes must be positive"):
        tiny_video_recipe(max_minutes=0.0)


def test_dark_borders_give_some_clips_one_dark_band_and_leave_the_rest():
    from vae_deploy.training.tasks.video import random_dark_borders

    clips = torch.rand(64, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5  # >= 0.5
    assert random_dark_borders(clips, 0.0, torch.Generator()) is clips
    out = random_dark_borders(clips, 0.5, torch.Generator().manual_seed(1))
    assert clips.min() >= 0.5  # the input is not modified
    banded = 0
    for before, after in zip(clips, out, strict=True):
        dark = after < 0.5  # (T, C, H, W): only band pixels fall below 0.5
        if not dark.any():
            assert torch.equal(before, after)
            continue
        banded += 1
        assert (dark == dark[0, 0]).all()  # the same band in every frame and channel
        rows, cols = dark[0, 0].any(1).nonzero().flatten(), dark[0, 0].any(0).nonzero().flatten()
        full_rows, full_cols = dark[0, 0].all(1).nonzero().flatten(), dark[0, 0].all(0).nonzero().flatten()
        band = full_rows if len(full_rows) else full_cols  # a band spans the frame along its edge
        assert 1 <= len(band) <= 32 // 8 and (band[0] == 0 or band[-1] == 31)
        assert len(band) == (len(rows) if len(full_rows) else len(cols))
        grey = after[0][dark[0]]
        assert (grey == grey[0]).all() and 0 <= grey[0] <= 0.1
        assert torch.equal(after[~dark], before[~dark])
    assert 16 <= banded <= 48
    with pytest.raises(ConfigError, match="dark_borders is a probability"):
        tiny_video_recipe(data={"dark_borders": 1.5})


def test_stills_take_their_share_of_the_training_clips_and_leave_runs_without_them_unchanged(tmp_path):
    """With data.stills, about stills_share of each batch pans over a photo (here a flat photo of one
    colour no video frame has); without, the task draws exactly the videos' clips (same generator)."""
    photo = tmp_path / "flat.png"
    cv2.imwrite(str(photo), np.full((64, 80, 3), (0, 255, 1), np.uint8))  # BGR: RGB (1, 255, 0)
    data = {"short_side": 48, "clips_per_epoch": 64}
    device = torch.device("cpu")

    def still_count(clips):
        flat = (clips[:, :, 1] == 1.0).flatten(1).all(1) & (clips[:, :, 2] == 0.0).flatten(1).all(1)
        return int(flat.sum())

    for share, low, high in ((1.0, 64, 64), (0.5, 16, 48)):
        stills = {"stills": [str(photo)], "stills_share": share}
        recipe = tiny_video_recipe(data={**data, **stills}, batch_size=64)
        task = build_task(recipe.data_kind, recipe.data, recipe.train, device)
        (batch,) = task.train_batches(torch.Generator().manual_seed(0))
        assert batch.shape == (64, 4, 3, 32, 32) and low <= still_count(batch) <= high
    plain = tiny_video_recipe(data=data, batch_size=64)
    task = build_task(plain.data_kind, plain.data, plain.train, device)
    assert torch.equal(task.random_clips(8, torch.Generator().manual_seed(3)),
                       task.train_set.random_clips(8, 4, 32, torch.Generator().manual_seed(3)))


def test_init_from_starts_a_temporal_run_from_a_trained_frame_run(trained_runs, tmp_path):
    """train.init_from copies the FrameVAE run's encoder and decoder before the first step; a resumed run
    continues from its own state, not from the init_from weights."""
    from vae_deploy.training.trainer import Trainer

    frame, _ = load_model(trained_runs["frame"])
    recipe = tiny_video_recipe("temporal", init_from=str(trained_runs["frame"]))
    trainer = Trainer(recipe, tmp_path / "run", console=QUIET)
    for part in ("encoder", "decoder"):
        mine, theirs = getattr(trainer.model, part).state_dict(), getattr(frame, part).state_dict()
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)
    trainer.fit()
    trained = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not torch.equal(trained["encoder.net.1.weight"], frame.state_dict()["encoder.net.1.weight"])
    resumed = Trainer(tiny_video_recipe("temporal", epochs=2, init_from=str(trained_runs["frame"])),
                      tmp_path / "run", resume=True, console=QUIET)
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in trained.items())
    missing = tiny_video_recipe("temporal", init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ModelFormatError, match="not a checkpoint folder"):
        train(missing, tmp_path / "other", console=QUIET)
    with pytest.raises(ConfigError, match="a 'frame' model cannot start from a 'temporal' model"):
        train(tiny_video_recipe("frame", init_from=str(tmp_path / "run")), tmp_path / "third", console=QUIET)


def test_a_time_budget_ends_the_lr_cosine_before_the_last_step(tmp_path):
    """With max_minutes spent during the first step, the lr reaches lr_final at once, although 10 epochs
    of steps were planned: a run cut short by its budget ends on the low-lr end of the curve."""
    from vae_deploy.training.trainer import Trainer

    recipe = tiny_video_recipe("frame", epochs=10, lr=2e-3, lr_final=2e-5, max_minutes=1e-4)
    Trainer(recipe, tmp_path / "run", console=QUIET).fit()
    state = load_state(RunFolder(tmp_path / "run").state)
    (group,) = state["optimizer"]["param_groups"]
    assert group["lr"] == pytest.approx(2e-5, rel=1e-12) and state["lr_progress"] == 1.0
