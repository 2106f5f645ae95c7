"""Atomic writes: outputs get the permissions the umask says; the temporaries of a killed write
are removed by the next write of the same target, never those of a writer still running."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssaseg import atomic_io

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- 5. file modes ------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_permissions_the_umask_says(tmp_path, umask, monkeypatch):
    import torch

    from ssaseg.data import cityscapes, download, synthetic
    from ssaseg.engine import checkpoint
    from ssaseg import report
    from tests.test_datasets import build_cityscapes
    from tests.test_report_atomic import fake_runs, quick_plots

    monkeypatch.setattr(report, "_plots", quick_plots)

    files, _ = build_cityscapes()
    runs = fake_runs(tmp_path / "inputs", miou=0.3)
    previous = os.umask(umask)
    try:
        raw = tmp_path / "raw"
        raw.mkdir()
        for filename, data in files.items():
            (raw / filename).write_bytes(data)
            download.write_record(raw / filename, "0" * 64)
        synthetic.prepare(None, tmp_path / "data" / "synthetic", num_train=1, num_val=1,
                          image_size=16)
        cityscapes.prepare(raw, tmp_path / "data" / "cityscapes", check_counts=False)
        run_dir = tmp_path / "results" / "run"
        checkpoint.save(run_dir / "checkpoints" / "last.pt", {"w": torch.zeros(2)})
        checkpoint.save(run_dir / "model.pt", {"w": torch.zeros(2)})
        atomic_io.write_json(run_dir / "eval.json", {"miou": 0.5})
        atomic_io.write_text(run_dir / "per_class_iou.csv", "class,iou\n")
        report.build_report(runs, tmp_path / "reports" / "mini")
        fake_runs(tmp_path / "inputs", miou=0.4)
        report.build_report(runs, tmp_path / "reports" / "mini")  # replaces the first one
    finally:
        os.umask(previous)
    written = [p for p in tmp_path.rglob("*") if "inputs" not in p.parts]
    assert len(written) > 30
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written
             if mode(p) != (0o777 if p.is_dir() else 0o666) & ~umask}
    assert wrong == {}


# --- 7. temporaries of killed writes ----------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys
from ssaseg import atomic_io
target, kind = sys.argv[1], sys.argv[2]
if kind == "file":
    with atomic_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_io.atomic_directory(target) as tmp:
        (tmp / "train").mkdir()
        (tmp / "train" / "00000.png").write_bytes(b"half a dataset")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def temporaries(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.iterdir()
                  if p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp"))


def kill_a_writer(target: Path, kind: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), kind], env=env,
                          timeout=60, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_temporaries_of_a_killed_write_are_removed_at_the_next_write(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    dataset = tmp_path / "data" / "synthetic"
    kill_a_writer(checkpoint, "file")
    kill_a_writer(dataset, "dir")
    [left_file] = temporaries(checkpoint)
    [left_dir] = temporaries(dataset)
    assert left_file.read_bytes() == b"half a checkpoint" and left_dir.is_dir()
    # what older versions left (mkstemp names, no PID): removed once untouched for a day
    old = checkpoint.with_name(".last.pt.k3j_x9qa.tmp")
    old.write_bytes(b"old")
    day_ago = time.time() - atomic_io.FOREIGN_STALE_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    recent = checkpoint.with_name(".last.pt.z8y7x6w5.tmp")
    recent.write_bytes(b"maybe still being written by an older version")
    # a killed write of another target in the same folder is that target's to clean
    other = checkpoint.with_name(f".last.pt.bak.{atomic_io._HOST}-999999999.0123abcd.tmp")
    other.write_bytes(b"not ours")

    atomic_io.write_bytes(checkpoint, b"whole")
    assert temporaries(checkpoint) == sorted([recent, other])
    assert checkpoint.read_bytes() == b"whole"
    with atomic_io.atomic_directory(dataset) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert temporaries(dataset) == []
    assert [p.name for p in dataset.iterdir()] == ["manifest.json"]


def test_the_next_run_of_a_killed_prepare_removes_its_temporary(tmp_path):
    from ssaseg.data import synthetic

    out = tmp_path / "data" / "synthetic"
    killed_prepare = (
        "import os, signal, sys\n"
        "from PIL import Image\n"
        "from ssaseg.data import synthetic\n"
        "calls = []\n"
        "real = Image.Image.save\n"
        "def save(self, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, *args, **kwargs)\n"
        "Image.Image.save = save\n"
        "synthetic.prepare(None, sys.argv[1], num_train=2, num_val=1, image_size=16)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", killed_prepare, str(out)], env=env,
                          timeout=60, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(temporaries(out)) == 1 and not out.exists()
    synthetic.prepare(None, out, num_train=2, num_val=1, image_size=16)
    assert temporaries(out) == [] and (out / "manifest.json").is_file()


def _live_writer(target: str, started, finish) -> None:
    """Hold a temporary of ``target`` (a file and a directory) open across the barriers."""
    with atomic_io.atomic_path(target) as tmp, \
            atomic_io.atomic_directory(Path(target).with_name("dataset")) as tmp_dir:
        tmp.write_bytes(b"first writer, part")
        (tmp_dir / "a").write_bytes(b"first writer")
        started.wait(timeout=60)
        finish.wait(timeout=60)  # meanwhile the other process writes the same targets
        tmp.write_bytes(b"first writer")


def test_a_concurrent_writers_temporary_is_never_removed(tmp_path):
    """Stale means: its writer's PID is dead (same host). A writer blocked mid-write is alive;
    a second writer of the same target must leave its temporary alone."""
    target = tmp_path / "eval.json"
    context = multiprocessing.get_context("spawn")
    started, finish = context.Barrier(2), context.Barrier(2)
    writer = context.Process(target=_live_writer, args=(str(target), started, finish))
    dataset = target.with_name("dataset")
    writer.start()
    try:
        started.wait(timeout=60)
        [theirs] = temporaries(target)
        [their_dir] = temporaries(dataset)
        atomic_io.write_bytes(target, b"second writer")
        with atomic_io.atomic_directory(dataset) as tmp:
            (tmp / "b").write_bytes(b"second writer")
        assert theirs.read_bytes() == b"first writer, part" and (their_dir / "a").is_file()
        finish.wait(timeout=60)
    except BaseException:
        finish.abort()
        raise
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert target.read_bytes() == b"first writer"  # the last rename wins, whole
    assert [p.name for p in dataset.iterdir()] == ["a"]
    assert temporaries(target) == [] and temporaries(dataset) == []
