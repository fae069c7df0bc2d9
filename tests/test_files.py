"""Atomic outputs (vae_deploy/files.py): unique temporary names, the usual file mode for every writer
(safetensors included), and the process umask left alone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from vae_deploy.files import atomic_path, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_temporary_names_are_unique_and_keep_the_suffix(tmp_path):
    target = tmp_path / "out.mp4"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".out.") and a.name.endswith(".part.mp4")
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # both published whole; the last rename (the outer block) wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_safetensors_get_the_mode_of_every_other_output(tmp_path):
    """safetensors replaces the file it is given with a 0600 one of its own; the output must still get
    0666 less the umask, like a JSON file written next to it."""
    torch = pytest.importorskip("torch")
    from vae_deploy.models.checkpoint import load_tensors, save_tensors

    save_tensors(tmp_path / "w.safetensors", {"x": torch.arange(4.0)})
    write_text_atomic(tmp_path / "c.json", "{}")
    (tmp_path / "plain.txt").write_text("")
    assert _mode(tmp_path / "w.safetensors") == _mode(tmp_path / "c.json") == _mode(tmp_path / "plain.txt")
    assert load_tensors(tmp_path / "w.safetensors")["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_outputs_honour_the_umask_and_the_umask_is_never_changed(tmp_path, umask):
    """In a fresh process whose os.umask refuses to be called (setting it is the only way to read it, and
    that races with other threads creating files): importing and writing still work, and the outputs get
    0666 less the process umask, safetensors included."""
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        os.umask({umask:#o})
        def refuse(mask):
            raise AssertionError("os.umask called")
        os.umask = refuse
        import torch
        from vae_deploy.files import write_json_atomic
        from vae_deploy.models.checkpoint import save_tensors
        out = Path(sys.argv[1])
        write_json_atomic(out / "a.json", {{"x": 1}})
        save_tensors(out / "w.safetensors", {{"x": torch.zeros(2)}})
    """)
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "w.safetensors") == 0o666 & ~umask


def test_the_next_writer_removes_a_killed_writers_temporary_file_and_nothing_else(tmp_path):
    """kill -9 inside atomic_path leaves the temporary file (its name holds the writer's pid); the next write
    of the same target removes it, and keeps a running writer's, another target's and the user's files."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from vae_deploy.files import atomic_path
        with atomic_path(Path(sys.argv[1])) as tmp:
            tmp.write_text("half")
            print(tmp.name, flush=True)
            time.sleep(600)
    """)

    def writing(target):
        process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE,
                                   text=True)
        return process, tmp_path / process.stdout.readline().strip()

    running, live = writing(tmp_path / "out.json")
    try:
        killed, stale = writing(tmp_path / "out.json")
        killed_other, other_target = writing(tmp_path / "out.json.bak")
        for process in (killed, killed_other):
            process.kill()
            process.wait()
        users = [tmp_path / ".out.notes", tmp_path / ".out.123-abc.part.json", tmp_path / "out.part.json"]
        for path in users:
            path.write_text("mine")
        assert stale.is_file() and stale.name.startswith(f".out.{killed.pid}-")
        write_text_atomic(tmp_path / "out.json", "{}")
        assert not stale.exists()
        assert live.is_file() and other_target.is_file() and all(p.is_file() for p in users)
        assert (tmp_path / "out.json").read_text() == "{}"
    finally:
        running.kill()
        running.wait()


def test_a_probe_left_by_a_process_killed_outright_is_removed_and_a_live_ones_kept(tmp_path):
    """ensure_writable_dir's probe carries its pid: the one a kill -9 left in the folder goes at the next
    check there (encode-dataset's parent also removes it when a worker died), a running process's stays."""
    from vae_deploy.files import ensure_writable_dir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = tmp_path / f".probe-{int(gone.stdout)}-0123456789ab"
    live = tmp_path / f".probe-{os.getpid()}-0123456789ab"
    other = tmp_path / ".probe-notapid-0123456789ab"  # not a probe's name: never touched
    for path in (dead, live, other):
        path.touch()
    ensure_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
