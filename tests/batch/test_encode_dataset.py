"""`vae-deploy encode-dataset`: real clips cut from the packaged clip with OpenCV, a truncated clip and a
non-video file, through real processes; byte-identical to a serial loop of `vae-deploy encode`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_clips import SIZE
from cli_support import assert_one_line_error, cli_process

GOOD = {"one.mp4": (0, 9), "a/two.mp4": (9, 21), "a/b/three.avi": (21, 28), "c/four.mp4": (28, 36)}
BAD = ("a/cut.mp4", "c/notes.mp4")  # a clip with its tail cut off, a text file with a video suffix


def reference_key(name: str) -> str:
    """What the `serial` fixture (conftest.py) keys a clip's bytes by: its output path."""
    return str(Path(name).with_suffix(".vaelat"))


def _index(out: Path) -> dict[str, dict]:
    lines = (out / "index.jsonl").read_text().splitlines()
    return {e["output"]: e for e in map(json.loads, lines)}


def _encode_dataset(*args):
    return cli_process("encode-dataset", *args, "--size", SIZE, "-q")


def _check_batch(result, out: Path, serial: dict[str, bytes]) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        f"encoded {len(GOOD)} of {len(GOOD) + len(BAD)} videos; {len(BAD)} failed "
        f"(see {out / 'index.jsonl'})")
    for output, data in serial.items():
        assert (out / output).read_bytes() == data, output
    index = _index(out)
    assert sorted(index) == sorted([*serial, *(str(Path(b).with_suffix(".vaelat")) for b in BAD)])
    for name, (a, b) in GOOD.items():
        entry = index[str(Path(name).with_suffix(".vaelat"))]
        assert entry["status"] == "ok" and entry["frames"] == b - a and entry["error"] is None
        assert entry["latent_shape"][0] == b - a and entry["seconds"] > 0
    for name in BAD:
        entry = index[str(Path(name).with_suffix(".vaelat"))]
        assert entry["status"] == "failed" and "is not a video" in entry["error"], entry
        assert not (out / Path(name).with_suffix(".vaelat")).exists()
    leftovers = [p for p in out.rglob(".*")]
    assert not leftovers, leftovers  # no staging or temporary files


def test_local_engine_matches_serial_encode_records_failures_and_resumes(clips, serial, tmp_path):
    out = tmp_path / "latents"
    result = _encode_dataset(clips, "--out", out, "--workers", "2")
    _check_batch(result, out, serial)

    # A rerun skips the complete ones (files untouched), redoes a deleted and a damaged one, retries the bad.
    outputs = sorted(serial)
    mtimes = {o: os.stat(out / o).st_mtime_ns for o in outputs}
    (out / outputs[0]).unlink()
    damaged = bytearray((out / outputs[1]).read_bytes())
    damaged[20] ^= 0xFF
    (out / outputs[1]).write_bytes(bytes(damaged))
    mtimes[outputs[1]] = os.stat(out / outputs[1]).st_mtime_ns
    again = _encode_dataset(clips, "--out", out, "--workers", "2")
    assert again.returncode == 1, again.stderr
    assert f"({len(GOOD) - 2} already done)" in again.stdout
    for output in outputs[2:]:
        assert os.stat(out / output).st_mtime_ns == mtimes[output], output
    for output in outputs[:2]:
        assert (out / output).read_bytes() == serial[output]
    assert len((out / "index.jsonl").read_text().splitlines()) == len(GOOD) + len(BAD) + 4  # compacted, +4


def test_a_list_file_mirrors_listed_relative_paths(clips, serial, tmp_path):
    listing = clips / "list.txt"
    listing.write_text("# two clips\none.mp4\n\na/b/three.avi\n")
    out = tmp_path / "latents"
    result = _encode_dataset(listing, "--out", out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "encoded 2 of 2 videos"
    assert (out / "one.vaelat").read_bytes() == serial["one.vaelat"]
    assert (out / "a/b/three.vaelat").read_bytes() == serial["a/b/three.vaelat"]


@pytest.mark.parametrize("case, pattern", [
    ("missing", "no such video, folder or list"),
    ("empty", "no videos found"),
    ("workers0", "--workers must be at least 1"),
])
def test_bad_input_is_one_line(case, pattern, clips, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt.bak").write_text("x")
    args = {"missing": [tmp_path / "nope.mp4"], "empty": [empty],
            "workers0": [clips / "one.mp4", "--workers", "0"]}[case]
    result = _encode_dataset(*args, "--out", tmp_path / "out")
    assert_one_line_error(result, pattern, 2)
    assert not (tmp_path / "out").exists()


def test_unreachable_ray_address_is_one_line(clips, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'vae-deploy[ray]')")
    result = _encode_dataset(clips / "one.mp4", "--out", tmp_path / "out", "--engine", "ray",
                             "--address", "127.0.0.1:1")
    assert_one_line_error(result, "cannot reach the Ray cluster at 127.0.0.1:1", 2)
    assert not (tmp_path / "out").exists()


def test_ray_engine_matches_serial_encode(clips, serial, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'vae-deploy[ray]')")
    out = tmp_path / "latents"
    result = _encode_dataset(clips, "--out", out, "--engine", "ray", "--workers", "2")
    _check_batch(result, out, serial)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A running single-node Ray cluster, as `ray start --head` makes one on a head node (with token
    authentication on, as Ray >= 2.59 does for a local cluster); its address. Run with --block in a session
    of its own so that only this cluster's processes are stopped afterwards (`ray stop` would stop every
    Ray on the machine)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'vae-deploy[ray]')")
    port = _free_port()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats"], env={**os.environ, "RAY_AUTH_MODE": "token"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_ray_engine_joins_a_running_cluster(clips, serial, ray_head, tmp_path, monkeypatch):
    """--address joins the cluster (the token from the environment, as Ray's docs say), with files equal
    to a serial encode; without --address a batch starts a Ray of its own even while this one runs; and a
    driver without the token gets one line saying how to give it."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    out = tmp_path / "joined"
    _check_batch(_encode_dataset(clips, "--out", out, "--engine", "ray", "--address", ray_head,
                                 "--workers", "2"), out, serial)
    monkeypatch.delenv("RAY_AUTH_MODE")
    own = tmp_path / "own"
    _check_batch(_encode_dataset(clips, "--out", own, "--engine", "ray", "--workers", "2"), own, serial)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    refused = _encode_dataset(clips / "one.mp4", "--out", tmp_path / "refused", "--engine", "ray",
                              "--address", ray_head)
    assert_one_line_error(refused, f"cannot connect to the Ray cluster at {ray_head}: the cluster asks for "
                                   "its authentication token: set RAY_AUTH_MODE=token", 2)
    assert not (tmp_path / "refused").exists()


def test_symlinked_subfolders_are_followed_and_each_real_video_encoded_once(clips, serial, tmp_path):
    """A symlinked subfolder is walked like a real one (it was skipped without a word); a link back up the
    tree is no loop, and a second link to a folder already walked adds nothing."""
    root, elsewhere, out = tmp_path / "corpus", tmp_path / "elsewhere", tmp_path / "latents"
    (root / "a").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copyfile(clips / "one.mp4", root / "a" / "one.mp4")
    shutil.copyfile(clips / "a" / "two.mp4", elsewhere / "two.mp4")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "twin").symlink_to(root / "a", target_is_directory=True)
    result = _encode_dataset(root, "--out", out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "encoded 2 of 2 videos"
    assert sorted(_index(out)) == ["a/one.vaelat", "linked/two.vaelat"]
    assert (out / "a/one.vaelat").read_bytes() == serial["one.vaelat"]
    assert (out / "linked/two.vaelat").read_bytes() == serial["a/two.vaelat"]
