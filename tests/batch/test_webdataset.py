"""`vae-deploy encode-dataset --format webdataset`: tar shards of real clips (cut from the packaged clip,
plus a truncated clip and a non-video file), read back with the real `webdataset` package; the .vaelat
members are the bytes of a serial loop of `vae-deploy encode`; local and ray shards are byte-identical;
reruns repack only what is missing and reuse finished parts."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from batch_clips import SIZE
from cli_support import assert_one_line_error, cli_process, invoke_main

SHARD_SIZE = 2
GOOD = {"one.mp4": (0, 9), "a/two.mp4": (9, 21), "a/b/three.avi": (21, 28), "c/four.v2.mp4": (28, 36)}
BAD = ("a/cut.mp4", "c/notes.mp4")  # a clip with its tail cut off, a text file with a video suffix
# The batch sorted by output path, cut into shards of SHARD_SIZE; keys escape the basename's dots.
SHARDS = [["a/b/three", "a/cut"], ["a/two", "c/four%2Ev2"], ["c/notes", "one"]]
KEYS = {"one.mp4": "one", "a/two.mp4": "a/two", "a/b/three.avi": "a/b/three", "c/four.v2.mp4": "c/four%2Ev2"}
FAILED_KEYS = {"a/cut", "c/notes"}


def reference_key(name: str) -> str:
    """What the `serial` fixture (conftest.py) keys a clip's bytes by: its WebDataset key."""
    return KEYS[name]


def _encode_dataset(clips: Path, out: Path, *args):
    return cli_process("encode-dataset", clips, "--out", out, "--format", "webdataset", "--shard-size",
                       SHARD_SIZE, "--size", SIZE, "-q", *args)


@pytest.fixture(scope="module")
def local_shards(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "shards"
    result = _encode_dataset(clips, out, "--workers", "2", "--index", "parquet")
    assert result.returncode == 1, result.stderr  # two videos failed
    assert result.stdout.strip().splitlines()[-1] == (
        f"encoded {len(GOOD)} of {len(GOOD) + len(BAD)} videos; {len(BAD)} failed "
        f"(see {out / 'index.jsonl'})")
    return out


def _shard(out: Path, number: int) -> Path:
    return out / f"shard-{number:06d}.tar"


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _snapshot(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each shard's (inode, mtime, bytes)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {name: data for name, (_, _, data) in _snapshot(out).items()}


def test_shards_hold_serial_encode_bytes_follow_shard_size_and_index_failures(local_shards, serial, clips):
    out = local_shards
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json", "index.jsonl", "index.parquet",
        *(_shard(out, k).name for k in range(len(SHARDS)))]  # no parts or temporary files left
    for number, keys in enumerate(SHARDS):
        members = _members(_shard(out, number))
        ok = [k for k in keys if k not in FAILED_KEYS]
        assert list(members) == [k + ext for k in ok for ext in (".json", ".vaelat")]  # order fixed
        for key in ok:
            assert members[key + ".vaelat"] == serial[key], key
        with tarfile.open(_shard(out, number)) as tar:
            fixed = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar}
            assert fixed <= {(0, 0, 0, "", "", 0o644)}, fixed
    index = {e["output"]: e for e in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    assert sorted(index) == sorted(k + ".vaelat" for keys in SHARDS for k in keys)
    for number, keys in enumerate(SHARDS):
        for key in keys:
            entry = index[key + ".vaelat"]
            assert entry["shard"] == _shard(out, number).name
            assert entry["status"] == ("failed" if key in FAILED_KEYS else "ok"), entry
    for name, (a, b) in GOOD.items():
        assert index[KEYS[name] + ".vaelat"]["frames"] == b - a
        assert index[KEYS[name] + ".vaelat"]["source"] == str(clips / name)


def test_index_parquet_is_a_copy_of_the_jsonl_index(local_shards):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.loads(line) for line in (local_shards / "index.jsonl").read_text().splitlines()]
    table = pq.read_table(local_shards / "index.parquet")
    assert table.column_names == list(lines[0])
    assert table.to_pylist() == lines
    shape_type = table.schema.field("latent_shape").type  # typed: a list of ints, not strings
    assert pa.types.is_list(shape_type) and shape_type.value_type == pa.int64()


def test_webdataset_reads_every_sample_with_its_metadata(local_shards, serial, clips, tmp_path):
    import webdataset

    from vae_deploy.runtime.latents import LatentReader

    urls = [str(_shard(local_shards, k)) for k in range(len(SHARDS))]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [k for keys in SHARDS for k in keys if k not in FAILED_KEYS]
    sources = {key: name for name, key in KEYS.items()}
    for sample in samples:
        key = sample["__key__"]
        assert sample["vaelat"] == serial[key]
        meta = json.loads(sample["json"])
        extracted = tmp_path / (key.replace("/", "_") + ".vaelat")
        extracted.write_bytes(sample["vaelat"])
        header = LatentReader(extracted).header
        a, b = GOOD[sources[key]]
        assert meta == {"source": str(clips / sources[key]), "frames": b - a,
                        "latent_shape": [header.latent_frames, *header.latent_shape], "fps": header.fps,
                        "model_fingerprint": header.model_fingerprint, "model_kind": header.model_kind,
                        "latent_space": header.latent_space, "truncated": False}


def test_rerun_after_deleting_a_shard_repacks_only_it(local_shards, clips, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(local_shards, out)
    before = _snapshot(out)
    _shard(out, 1).unlink()
    result = _encode_dataset(clips, out, "--workers", "2")
    assert result.returncode == 1, result.stderr  # the two bad videos fail again
    assert f"({len(GOOD) - 2} already done)" in result.stdout  # shard 1's two videos were redone
    after = _snapshot(out)
    assert after[_shard(out, 1).name][2] == before[_shard(out, 1).name][2]  # byte-identical repack
    for number in (0, 2):  # untouched: not even rewritten with the same bytes
        assert after[_shard(out, number).name] == before[_shard(out, number).name]


def test_a_leftover_parts_folder_is_reused(local_shards, clips, tmp_path):
    """What an interrupt leaves: shard 1's videos finished (their parts kept), shard 2 never packed."""
    out = tmp_path / "shards"
    shutil.copytree(local_shards, out)
    before = _snapshot(out)
    parts = out / "shard-000001.parts"
    for name, data in _members(_shard(out, 1)).items():
        if name.endswith(".vaelat"):
            (parts / name).parent.mkdir(parents=True, exist_ok=True)
            (parts / name).write_bytes(data)
    _shard(out, 1).unlink()
    _shard(out, 2).unlink()
    result = _encode_dataset(clips, out, "--workers", "1")
    assert result.returncode == 1, result.stderr
    assert f"({len(GOOD) - 1} already done)" in result.stdout  # only shard 2's good video is encoded again
    assert not parts.exists()
    assert _shard_bytes(out) == {name: data for name, (_, _, data) in before.items()}


def test_sigterm_keeps_finished_parts_and_a_rerun_reuses_them(clips, serial, tmp_path):
    """A real SIGTERM once a video is recorded: every recorded video stays (in its shard or as a whole part
    file), and the rerun encodes only the others."""
    from vae_deploy.batch.index import read_index
    from vae_deploy.runtime.latents import LatentReader

    out = tmp_path / "shards"
    args = [clips, "--out", out, "--format", "webdataset", "--shard-size", "3", "--size", SIZE, "-q",
            "--workers", "1"]
    process = subprocess.Popen([sys.executable, "-m", "vae_deploy", "encode-dataset", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not any(
            e.ok for e in read_index(out / "index.jsonl").values()):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    done = [e for e in read_index(out / "index.jsonl").values() if e.ok]
    assert 1 <= len(done) < len(GOOD), done
    for entry in done:
        if not (out / entry.shard).exists():
            LatentReader(out / entry.shard.replace(".tar", ".parts") / entry.output)  # whole

    rerun = cli_process("encode-dataset", *args)
    assert rerun.returncode == 1, rerun.stderr
    assert f"({len(done)} already done)" in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "index.jsonl", "shard-000000.tar",
                                                     "shard-000001.tar"]
    latents = {name[: -len(".vaelat")]: data for k in range(2)
               for name, data in _members(_shard(out, k)).items() if name.endswith(".vaelat")}
    assert latents == serial


def test_ray_shards_are_byte_identical_to_local(local_shards, clips, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'vae-deploy[ray]')")
    out = tmp_path / "shards"
    result = _encode_dataset(clips, out, "--engine", "ray", "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert _shard_bytes(out) == _shard_bytes(local_shards)


@pytest.mark.parametrize("args, pattern", [
    (["--shard-size", "3"], "--shard-size is for --format webdataset"),
    (["--format", "webdataset", "--shard-size", "0"], "--shard-size must be at least 1, got 0"),
    (["--format", "tar"], "--format must be one of vaelat, webdataset, got 'tar'"),
    (["--index", "csv"], "--index must be one of jsonl, parquet, got 'csv'"),
])
def test_bad_option_combinations_are_one_line(args, pattern, clips, tmp_path, monkeypatch, capsys):
    result = invoke_main(monkeypatch, capsys, "encode-dataset", clips / "one.mp4", "--out", tmp_path / "out",
                         *args)
    assert_one_line_error(result, pattern, 2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--format", "webdataset", "--shard-size", "3"], "encoded with --format webdataset --shard-size 2"),
    (["--format", "vaelat"], "encoded with --format webdataset --shard-size 2"),
    ([], "encoded with --format webdataset --shard-size 2"),
])
def test_a_rerun_with_another_layout_is_refused(args, pattern, local_shards, clips, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in local_shards.iterdir()}
    result = invoke_main(monkeypatch, capsys, "encode-dataset", clips, "--out", local_shards, "--size", SIZE,
                         *args)
    assert_one_line_error(result, pattern, 2)
    assert {p.name: p.read_bytes() for p in local_shards.iterdir()} == before
