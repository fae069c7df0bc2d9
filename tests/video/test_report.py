"""Per-frame metrics and the report page (video/report.py) without a browser: what `run --report`, `demo`
write, that the page needs no network, and one `error:` line for a report folder that cannot be written.
The page in a real browser: tests/video/test_report_browser.py."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from cli_support import assert_one_line_error

from vae_deploy.runtime.manifest import read_manifest
from vae_deploy.video.fit import fitted_clip
from vae_deploy.video.metrics import VideoMetrics, psnr, ssim_frame
from vae_deploy.video.sources import open_source


def read_video(path) -> np.ndarray:
    with open_source(path) as source:
        return source.read()


class _Links(HTMLParser):
    """Every tag and its src / href attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_per_frame_metrics_are_each_frames_numbers_whatever_the_chunks(carphone):
    with open_source(carphone) as source:
        frames = source.read(10)
    recon = np.stack([cv2.GaussianBlur(f, (5, 5), 1.5) for f in frames])
    whole, chunked = VideoMetrics(), VideoMetrics()
    whole.update(frames, recon)
    for start in (0, 3, 4, 8):  # uneven chunks, one of a single frame
        end = {0: 3, 3: 4, 4: 8, 8: 10}[start]
        chunked.update(frames[start:end], recon[start:end])
    per_frame = chunked.per_frame()
    assert per_frame == whole.per_frame()
    assert per_frame["psnr"] == pytest.approx([psnr(f, r) for f, r in zip(frames, recon, strict=True)])
    assert per_frame["ssim"] == pytest.approx([ssim_frame(f, r) for f, r in zip(frames, recon, strict=True)])
    s, r = frames.astype(np.float64) / 255, recon.astype(np.float64) / 255
    flicker = [np.abs((r[t] - r[t - 1]) - (s[t] - s[t - 1])).mean() for t in range(1, 10)]
    assert per_frame["flicker"][0] is None and per_frame["flicker"][1:] == pytest.approx(flicker)
    # the whole-video numbers are unchanged: the mean SSIM and flicker, PSNR over all pixels
    assert chunked.ssim == pytest.approx(np.mean(per_frame["ssim"]))
    assert chunked.flicker == pytest.approx(np.mean(flicker))
    assert chunked.psnr == pytest.approx(psnr(frames, recon))


def test_run_report_writes_the_page_beside_the_frames_the_model_saw(vd, tiny_video_model, carphone, tmp_path):
    model = tiny_video_model("frame")
    report = tmp_path / "report"
    ran = vd("run", carphone, "--model", model, "--report", report, "--metrics", tmp_path / "m.json",
             "--max-frames", 12, "--chunk", 4)
    assert ran.returncode == 0, ran.stderr
    assert f"wrote report: {report / 'report.html'}" in ran.stdout
    assert "PSNR" in ran.stdout  # --report measures the quality it shows
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert [len(metrics["per_frame"][k]) for k in ("psnr", "ssim", "flicker")] == [12, 12, 12]
    assert metrics["ssim"] == pytest.approx(np.mean(metrics["per_frame"]["ssim"]))
    assert metrics["latent_shape"] == [4, 4, 5]  # 40x32 working frames over the spatial factor 8
    # source.mp4: the fitted frames the model saw, at the working size; decoded.mp4 its reconstruction
    source, decoded = read_video(report / "source.mp4"), read_video(report / "decoded.mp4")
    assert source.shape == decoded.shape == (12, 32, 40, 3)
    fitted = fitted_clip(carphone, read_manifest(model).graph("encoder"), 12, short_side=32)[0]
    fitted = np.clip(fitted.transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert psnr(fitted, source) > 30  # the same frames, through the video codec
    page = (report / "report.html").read_text()
    assert f"{metrics['psnr']:.2f}" in page and f"{metrics['compression_ratio']:.1f}x" in page
    assert page.count("<polyline") == 3
    assert not [p for p in report.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_the_page_needs_no_network_and_names_only_files_beside_it(vd, tiny_video_model, carphone, tmp_path):
    ran = vd("run", carphone, "--model", tiny_video_model("frame"), "--report", tmp_path, "--max-frames", 4,
             "--chunk", 4)
    assert ran.returncode == 0, ran.stderr
    parser = _Links()
    parser.feed((tmp_path / "report.html").read_text())
    assert parser.links == ["source.mp4", "decoded.mp4"]
    assert all((tmp_path / link).is_file() for link in parser.links)
    assert "link" not in parser.tags and "iframe" not in parser.tags and "img" not in parser.tags


def test_demo_writes_its_report_in_its_folder(packaged_demo_dir):
    # `vae-deploy demo --out-dir DIR --quiet`, run once for the test run (tests/conftest.py: it exited 0)
    demo = packaged_demo_dir
    metrics = json.loads((demo / "metrics.json").read_text())
    w, h = metrics["working_size"]
    assert read_video(demo / "decoded.mp4").shape == (metrics["frames"], h, w, 3)
    page = (demo / "report.html").read_text()
    assert f"{metrics['psnr']:.2f}" in page and "carphone_pristine.mp4" in page
    assert all(math.isfinite(v) for v in metrics["per_frame"]["psnr"])


def test_a_report_folder_that_is_a_file_is_one_error_line(vd, tiny_video_model, carphone, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    result = vd("run", carphone, "--model", tiny_video_model("frame"), "--report", taken, "--max-frames", 2)
    assert_one_line_error(result, f"cannot write the report to {taken}: it is a file")
    assert taken.read_text() == "not a folder"
    under = taken / "report"
    result = vd("run", carphone, "--model", tiny_video_model("frame"), "--report", under, "--max-frames", 2)
    assert_one_line_error(result, f"cannot write to output folder {under}")


def test_a_report_folder_inside_the_model_is_refused_before_it_is_made(vd, tiny_video_model, carphone):
    model = tiny_video_model("frame")
    inside = model / "report"
    result = vd("run", carphone, "--model", model, "--report", inside, "--max-frames", 2)
    assert_one_line_error(result, "lies inside the model folder")
    assert not inside.exists()
