"""The demo's report page and videos opened in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by .ci/run) driven by Selenium.

Skips, with the reason, only when no Chromium or chromedriver is installed. Set VAE_DEPLOY_SCREENSHOT=1 to
also refresh docs/images/report.png, the screenshot the docs show (docs/report.md).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vae_deploy.video.sinks import VideoSink

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "report.png"

# Resolves with what the element knows once its metadata loaded, or failed to.
_MEDIA_STATE = """
var v = arguments[0], done = arguments[arguments.length - 1];
function report() { done({error: v.error ? v.error.code : null, readyState: v.readyState,
                          duration: v.duration, width: v.videoWidth, height: v.videoHeight}); }
if (v.readyState >= 1 || v.error) { report(); }
else { v.addEventListener('loadedmetadata', report); v.addEventListener('error', report); v.load(); }
"""
MEDIA_ERR_SRC_NOT_SUPPORTED = 4


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: install Debian's chromium and chromium-driver "
                    f"(.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=940,1400", "--hide-scrollbars"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def demo_dir(packaged_demo_dir, tmp_path_factory) -> Path:
    """`vae-deploy demo --out-dir OUT --quiet`'s folder (run once per test run, tests/conftest.py), copied:
    the tests write pages and a screenshot beside its files."""
    return shutil.copytree(packaged_demo_dir, tmp_path_factory.mktemp("demo") / "out")


def media_state(driver, element) -> dict:
    return driver.execute_async_script(_MEDIA_STATE, element)


def video_page(driver, folder: Path, name: str) -> dict:
    """Open `name` (beside a small page in `folder`) in a <video> element; its state once loaded or failed."""
    page = folder / f"play_{Path(name).stem}.html"
    page.write_text(f'<!DOCTYPE html><video src="{name}" preload="auto" muted></video>')
    driver.get(page.as_uri())
    return media_state(driver, driver.find_element("tag name", "video"))


def assert_plays(state: dict, frames: int, fps: float, size: list[int]) -> None:
    assert state["error"] is None, state
    assert state["readyState"] >= 1, state
    assert abs(state["duration"] - frames / fps) <= 1.0 / fps + 1e-6, (state, frames / fps)
    assert [state["width"], state["height"]] == size, state


def test_every_video_of_the_demo_report_loads_with_its_duration_and_size(browser, demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    browser.get((demo_dir / "report.html").as_uri())
    videos = browser.find_elements("css selector", "video")
    assert [v.get_attribute("src").rsplit("/", 1)[-1] for v in videos] == ["source.mp4", "decoded.mp4"]
    for video in videos:
        assert_plays(media_state(browser, video), metrics["frames"], metrics["fps"], metrics["working_size"])


def test_the_demo_reconstruction_and_side_by_side_play_in_chromium(browser, demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    w, h = metrics["source_size"]
    for name, size in (("reconstruction.mp4", [w, h]), ("side_by_side.mp4", [2 * w, h])):
        assert_plays(video_page(browser, demo_dir, name), metrics["frames"], metrics["fps"], size)


def test_the_report_page_shows_the_metrics_and_per_frame_plots(browser, demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    browser.get((demo_dir / "report.html").as_uri())
    table = browser.find_element("id", "metrics").text
    assert f"{metrics['psnr']:.2f}" in table and f"{metrics['ssim']:.4f}" in table
    assert f"{metrics['frames_per_s']:.1f}" in table and f"{metrics['compression_ratio']:.1f}x" in table
    plots = browser.find_elements("css selector", "svg.plot")
    assert [p.get_attribute("data-metric") for p in plots] == ["psnr", "ssim", "flicker"]
    for plot in plots:
        points = plot.find_element("tag name", "polyline").get_attribute("points").split()
        assert len(points) >= metrics["frames"] - 1  # flicker has no value for the first frame
        assert plot.size["width"] > 100 and plot.size["height"] > 50  # laid out, visible
    model = browser.find_element("id", "model").text
    assert "ort-cpu" in model and "4 x 16 x 20" in model
    screenshot = demo_dir / "report.png"
    # The page's play button plays both players; paused a second in, they show that frame (and no loading
    # spinner, which headless Chromium keeps over a video never played).
    times = browser.execute_async_script("""var done = arguments[arguments.length - 1];
        var videos = document.querySelectorAll('video'), button = document.getElementById('playpause');
        button.click(); setTimeout(function(){ button.click(); setTimeout(function(){
            done(Array.prototype.map.call(videos, function(v){ return v.currentTime; }));
        }, 300); }, 1000);""")
    assert times[0] > 0.3 and times[1] == pytest.approx(times[0], abs=0.1), times
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("VAE_DEPLOY_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)


def test_the_players_seek_together(browser, demo_dir):
    browser.get((demo_dir / "report.html").as_uri())
    for video in browser.find_elements("css selector", "video"):
        assert media_state(browser, video)["error"] is None
    times = browser.execute_async_script("""
        var done = arguments[arguments.length - 1], videos = document.querySelectorAll('video');
        var slider = document.getElementById('seek'), seen = 0;
        videos.forEach(function(v){ v.addEventListener('seeked', function(){
            if (++seen === videos.length) done(Array.prototype.map.call(videos, function(o){
                return o.currentTime; })); }, {once: true}); });
        slider.value = '500'; slider.dispatchEvent(new Event('input'));""")
    duration = browser.execute_script("return document.querySelector('video').duration")
    assert times[0] == pytest.approx(duration / 2, abs=0.05)
    assert times[1] == pytest.approx(times[0], abs=0.02)


def test_an_mp4v_mp4_fails_in_chromium_where_the_project_default_mp4_plays(browser, tmp_path):
    """The point of issue 17: OpenCV's mp4v (MPEG-4 Part 2) is not a codec browsers play."""
    rng = np.random.default_rng(0)
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (9, 9), 3)
              for _ in range(12)]
    writer = cv2.VideoWriter(str(tmp_path / "mp4v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (128, 96))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    with VideoSink(tmp_path / "default.mp4", fps=12.0) as sink:
        sink.write_all(frames)
    assert video_page(browser, tmp_path, "mp4v.mp4")["error"] == MEDIA_ERR_SRC_NOT_SUPPORTED
    assert_plays(video_page(browser, tmp_path, "default.mp4"), 12, 12.0, [128, 96])
