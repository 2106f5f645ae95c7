"""DVC round trip: a prepared data/ is added (data.dvc), pushed to a local-directory remote,
deleted together with the cache, and pulled back byte for byte."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from ssaseg.data.layout import DatasetMeta, read_manifest, write_manifest, write_meta
from ssaseg.data.versioning import DVCError, add_remote, pull_data, version_data

pytest.importorskip("dvc")


def make_dataset(root):
    rng = np.random.default_rng(0)
    write_meta(root, DatasetMeta("tiny", ["a", "b", "c"], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    for split, n in (("train", 3), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png")
            label = rng.choice([0, 1, 2, 255], size=(8, 8)).astype(np.uint8)
            Image.fromarray(label).save(root / split / "labels" / f"{i}.png")
    write_manifest(root, ["train", "val"])


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_add_push_pull_round_trip(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/data/\n")  # as in the project: data/ is git-ignored
    make_dataset(repo / "data" / "tiny")
    before = snapshot(repo / "data")
    # not versioned: downloaded archives, a partial download, an interrupted prepare
    (repo / "data" / "raw" / "tiny").mkdir(parents=True)
    (repo / "data" / "raw" / "tiny" / "archive.zip").write_bytes(b"archive")
    (repo / "data" / "raw" / "tiny" / "other.zip.part").write_bytes(b"arch")
    (repo / "data" / ".tiny.abc123.tmp").mkdir()
    (repo / "data" / ".tiny.abc123.tmp" / "meta.json").write_text("{}")

    add_remote("storage", str(remote), repo)
    pointer = version_data(repo, remote="storage")
    assert pointer == repo / "data.dvc"
    assert "path: data" in pointer.read_text() and f"nfiles: {len(before)}" in pointer.read_text()
    assert any(remote.rglob("*"))

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    pull_data(repo, remote="storage")
    assert snapshot(repo / "data") == before  # exactly the prepared dataset, nothing else
    assert read_manifest(repo / "data" / "tiny")["splits"]["val"]["count"] == 2


def test_dvc_errors_name_the_problem(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(DVCError, match="prepare a dataset first"):
        version_data(tmp_path, remote="storage")
    with pytest.raises(DVCError, match="nothing to pull"):
        pull_data(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("x")
    with pytest.raises(DVCError, match="dvc push"):
        version_data(tmp_path, remote="no-such-remote")
