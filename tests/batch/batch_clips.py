"""The corpus the encode-dataset tests share: real clips cut from the packaged clip with OpenCV, a clip with
its tail cut off and a text file with a video suffix, and each good clip's bytes from a serial loop of
`vae-deploy encode` (one process per clip), the reference every engine and format must equal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
from cli_support import cli_process
from shared_artifacts import build_once

from vae_deploy.video.samples import sample_video_path

SIZE = "64"  # --size of every encode: small frames keep the tests quick


def _write(path: Path, frames, fourcc: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()


def make_clips(root: Path, good: dict[str, tuple[int, int]], bad: tuple[str, str]) -> Path:
    """`good`: name -> (first, end) frame of the packaged clip (.avi names in Motion JPEG, others mp4v);
    `bad`: (a truncated clip's name, a non-video file's name)."""
    capture = cv2.VideoCapture(str(sample_video_path("carphone_pristine")))
    frames = [capture.read()[1] for _ in range(40)]
    capture.release()
    for name, (a, b) in good.items():
        _write(root / name, frames[a:b], "MJPG" if name.endswith(".avi") else "mp4v")
    _write(root / "full.mp4", frames[:12], "mp4v")
    data = (root / "full.mp4").read_bytes()
    (root / "full.mp4").unlink()
    (root / bad[0]).write_bytes(data[: len(data) * 2 // 3])
    (root / bad[1]).write_text("not a video\n")
    return root


def serial_encode(clips: Path, names, tmp_path_factory) -> dict[str, bytes]:
    """name -> the bytes `vae-deploy encode` writes for clips/name, one process per clip.

    Each encode is kept by the sha256 of the clip's bytes (shared_artifacts.build_once), so a clip that is
    byte for byte one encoded before in this run, by any module or xdist worker, is not encoded again:
    OpenCV writes the same frames to the same bytes, and both modules' corpora cut the same four clips
    (about 1 CPU s an encode process)."""
    expected = {}
    for name in names:
        digest = hashlib.sha256((clips / name).read_bytes()).hexdigest()[:32]
        folder = build_once(tmp_path_factory, f"batch_serial_encode_{digest}",
                            lambda folder, name=name: _encode(clips / name, folder / "latents.vaelat"))
        expected[name] = (folder / "latents.vaelat").read_bytes()
    return expected


def _encode(clip: Path, target: Path) -> None:
    result = cli_process("encode", clip, "-o", target, "--size", SIZE, "-q")
    assert result.returncode == 0, result.stderr
