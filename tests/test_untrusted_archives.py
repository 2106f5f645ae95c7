"""Archives and downloads are untrusted input: crafted archives in each dataset's real format
(members and ids with ``..``, absolute paths, symbolic links) never make ``prepare`` write
outside its directory; a corrupt archive is never recorded as trusted; a connection that
closes early is resumed, not taken as the whole file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from ssaseg import cli
from ssaseg.data import ade20k, cityscapes, coco_stuff, pascal_context
from ssaseg.data.download import ChecksumError, download_dataset, download_file, verify
from ssaseg.data.catalog import Archive
from ssaseg.data.layout import DatasetError
from tests.conftest import miniature_params, write_params
from tests.http_server import FileServer
from tests.test_datasets import (
    FAST,
    build_ade20k,
    build_cityscapes,
    build_coco_stuff,
    build_pascal_context,
    serve,
)

# --- crafting archives ---------------------------------------------------------------------


def rezip(data: bytes, add: dict[str, bytes] | None = None,
          links: dict[str, str] | None = None) -> bytes:
    """The zip ``data`` with members added (or replaced) and members turned into symbolic
    links (Unix mode 0o120777, the link target as content, as Info-ZIP stores them)."""
    add, links = add or {}, links or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename not in add and info.filename not in links:
                dst.writestr(info, src.read(info))
        for name, content in add.items():
            dst.writestr(name, content)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            dst.writestr(info, target)
    return out.getvalue()


def retar(data: bytes, add: dict[str, bytes] | None = None,
          links: dict[str, str] | None = None) -> bytes:
    add, links = add or {}, links or {}
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            if member.name not in add and member.name not in links:
                dst.addfile(member, src.extractfile(member))
        for name, content in add.items():
            info = tarfile.TarInfo(name)  # addfile keeps the name as given, absolute or not
            info.size = len(content)
            dst.addfile(info, io.BytesIO(content))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            dst.addfile(info)
    return out.getvalue()


def zip_member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(name)


def crafted(dataset: str, attack: str, outside: Path):
    """(files, prepare, text the error must quote) for one attack on one dataset's archives.

    ``outside`` is where a successful attack would write (inside the test's tmp_path)."""
    pwned = str(outside / "pwned")  # absolute
    if dataset == "ade20k":
        files, _ = build_ade20k()
        name = "ADEChallengeData2016.zip"
        root = "ADEChallengeData2016/"
        image = zip_member(files[name], f"{root}images/training/ADE_train_00000001.jpg")
        label = zip_member(files[name], f"{root}annotations/training/ADE_train_00000001.png")
        if attack == "dotdot":
            evil = f"{root}images/training/../../../../../outside/pwned.jpg"
            files[name] = rezip(files[name], add={
                evil: image, f"{root}annotations/training/pwned.png": label})
        elif attack == "absolute":
            evil = f"{pwned}.jpg"
            files[name] = rezip(files[name], add={evil: image})
        else:
            evil = f"{root}images/training/ADE_train_00000001.jpg"
            files[name] = rezip(files[name], links={evil: "/etc/passwd"})
        return files, ade20k.prepare, evil
    if dataset == "coco_stuff10k":
        files, _ = build_coco_stuff()
        name = "cocostuff-10k-v1.1.zip"
        item = "COCO_train2014_000000000100"
        image = zip_member(files[name], f"images/{item}.jpg")
        label = zip_member(files[name], f"annotations/{item}.mat")
        train = zip_member(files[name], "imageLists/train.txt")
        if attack == "dotdot":  # the case: the id and the members it names
            item = "../../../../outside/pwned"
            evil = f"images/{item}.jpg"  # the first member refused
            files[name] = rezip(files[name], add={
                "imageLists/train.txt": train + f"{item}\n".encode(),
                evil: image, f"annotations/{item}.mat": label})
        elif attack == "absolute":  # the member names are not absolute: only the id is
            evil = pwned
            files[name] = rezip(files[name], add={
                "imageLists/train.txt": train + f"{evil}\n".encode(),
                f"images/{evil}.jpg": image, f"annotations/{evil}.mat": label})
        else:
            evil = f"annotations/{item}.mat"
            files[name] = rezip(files[name], links={evil: "../../secret.mat"})
        return files, coco_stuff.prepare, evil
    if dataset == "pascal_context59":
        files, _ = build_pascal_context()
        name = "VOCtrainval_03-May-2010.tar"
        data = json.loads(files["trainval_merged.json"])
        first = data["images"][0]["file_name"]
        with tarfile.open(fileobj=io.BytesIO(files[name])) as t:
            image = t.extractfile(f"VOCdevkit/VOC2010/JPEGImages/{first}").read()
        if attack == "dotdot":
            evil = "VOCdevkit/VOC2010/JPEGImages/../../../outside/pwned.jpg"
            files[name] = retar(files[name], add={evil: image})
        elif attack == "absolute":  # the annotation file names the image by an absolute path
            evil = f"{pwned}.jpg"
            data["images"][0]["file_name"] = evil
            files["trainval_merged.json"] = json.dumps(data).encode()
            files[name] = retar(files[name], add={f"VOCdevkit/VOC2010/JPEGImages/{evil}": image})
        else:
            evil = f"VOCdevkit/VOC2010/JPEGImages/{first}"
            files[name] = retar(files[name], links={evil: "../../../../etc/passwd"})
        return files, pascal_context.prepare, evil
    files, _ = build_cityscapes()
    images, labels = "leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"
    item = "aachen_000000_000019"
    image = zip_member(files[images], f"leftImg8bit/train/aachen/{item}_leftImg8bit.png")
    if attack == "dotdot":
        evil = "leftImg8bit/train/aachen/../../../../outside/pwned_leftImg8bit.png"
        files[images] = rezip(files[images], add={evil: image})
    elif attack == "absolute":
        evil = f"{pwned}_gtFine_labelIds.png"
        files[labels] = rezip(files[labels], add={evil: image})
    else:
        evil = f"gtFine/train/aachen/{item}_gtFine_labelIds.png"
        files[labels] = rezip(files[labels], links={evil: "/etc/shadow"})
    return files, cityscapes.prepare, evil


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- 1. nothing written outside the dataset directory ----------------------------------------


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("dataset", ["ade20k", "coco_stuff10k", "pascal_context59", "cityscapes"])
def test_crafted_archive_cannot_write_outside_the_dataset(tmp_path, dataset, attack):
    raw, out = tmp_path / "raw", tmp_path / "data" / dataset
    raw.mkdir()
    out.parent.mkdir()
    files, prepare, evil = crafted(dataset, attack, tmp_path / "outside")
    for filename, data in files.items():
        (raw / filename).write_bytes(data)
    before = tree(tmp_path)
    with pytest.raises(DatasetError) as err:
        prepare(raw, out, check_counts=False)
    message = str(err.value)
    assert "refusing" in message and repr(evil) in message and "\n" not in message
    assert tree(tmp_path) == before  # nothing written anywhere: no dataset, no temporary
    assert not (tmp_path / "outside").exists()


def test_traversal_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    files, _, evil = crafted("coco_stuff10k", "absolute", tmp_path / "outside")
    params = miniature_params(tmp_path)
    params["raw_dir"] = str(tmp_path / "raw")
    params["datasets"] = {"coco_stuff10k": {"options": {"check_counts": False}}}
    params_file = write_params(tmp_path / "p.yaml", params)
    (tmp_path / "raw" / "coco_stuff10k").mkdir(parents=True)
    for filename, data in files.items():
        (tmp_path / "raw" / "coco_stuff10k" / filename).write_bytes(data)
    code = cli.main(["prepare", "--params", str(params_file), "--dataset", "coco_stuff10k"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and evil in err and "refusing" in err
    assert not (tmp_path / "outside").exists()
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


# --- 2. a corrupt archive is never recorded as trusted ---------------------------------------


def damaged_inside(data: bytes, kind: str) -> bytes:
    """``data`` with bytes inside a member overwritten; its directory (zip) / headers (tar)
    stay readable, so opening the archive alone does not notice."""
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = max(z.infolist(), key=lambda i: i.compress_size)
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        damaged = bytearray(data)
        for i in range(start + 8, start + 40):
            damaged[i] ^= 0x5A
        return bytes(damaged)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # truncated in the middle of a member
        member = max(t.getmembers(), key=lambda m: m.size)
    cut = member.offset_data + (member.size // 2) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
    return data[:cut]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_damaged_inside_is_not_recorded_as_trusted(tmp_path, kind):
    files, _ = build_coco_stuff() if kind == "zip" else build_pascal_context()
    name = "cocostuff-10k-v1.1.zip" if kind == "zip" else "VOCtrainval_03-May-2010.tar"
    path = tmp_path / name
    path.write_bytes(damaged_inside(files[name], kind))
    with pytest.raises(ChecksumError, match="corrupt|truncated"):
        verify(path, Archive(url="http://unused/", filename=name))  # no published checksum
    assert not path.with_name(name + ".sha256").exists()
    # the undamaged archive verifies, and only then is its sha256 recorded
    path.write_bytes(files[name])
    assert verify(path, Archive(url="http://unused/", filename=name)) == hashlib.sha256(
        files[name]).hexdigest()
    assert path.with_name(name + ".sha256").is_file()


def test_a_tar_cut_between_two_members_is_truncated(tmp_path):
    files, _ = build_pascal_context()
    data = files["VOCtrainval_03-May-2010.tar"]
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        last = t.getmembers()[-1]
    path = tmp_path / "VOCtrainval_03-May-2010.tar"
    path.write_bytes(data[: last.offset])  # whole blocks, every remaining member complete
    with pytest.raises(ChecksumError, match="end-of-archive"):
        verify(path, Archive(url="http://unused/", filename=path.name))
    assert not path.with_name(path.name + ".sha256").exists()


def test_stale_part_of_unknown_origin_is_not_trusted(tmp_path):
    """The issue's case: a ``.part`` whose first bytes are wrong (left by another tool, or a
    different version of the file) is completed; it must not be recorded as the trusted
    file, and the correct one must then install."""
    files, _ = build_coco_stuff()
    good = files["cocostuff-10k-v1.1.zip"]
    stale_length = len(good) * 2 // 3
    (tmp_path / "cocostuff-10k-v1.1.zip.part").write_bytes(os.urandom(stale_length))
    with FileServer({"/m/cocostuff-10k-v1.1.zip": good}, lifetime=60) as server:
        download_dataset("coco_stuff10k", tmp_path, mirror=server.url("/m"), **FAST)
        assert server.requests == [("/m/cocostuff-10k-v1.1.zip", f"bytes={stale_length}-"),
                                   ("/m/cocostuff-10k-v1.1.zip", None)]
    assert (tmp_path / "cocostuff-10k-v1.1.zip").read_bytes() == good
    record = (tmp_path / "cocostuff-10k-v1.1.zip.sha256").read_text().split()[0]
    assert record == hashlib.sha256(good).hexdigest()
    [kept] = tmp_path.glob("cocostuff-10k-v1.1.zip.corrupt-*")  # kept aside for inspection
    assert kept.read_bytes()[:stale_length] != good[:stale_length]
    assert not list(tmp_path.glob("*.part"))


def test_stale_part_is_not_trusted_against_a_published_checksum_either(tmp_path):
    files, _ = build_ade20k()
    good = files["ADEChallengeData2016.zip"]
    with FileServer(lifetime=60) as server:
        info = serve(server, "ade20k", files)
        (tmp_path / "ADEChallengeData2016.zip.part").write_bytes(b"\0" * (len(good) // 2))
        download_dataset(info, tmp_path, **FAST)
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == good


# --- 11. a connection closed early without a Content-Length ----------------------------------


def test_early_close_without_content_length_resumes(tmp_path):
    files, _ = build_ade20k()
    good = files["ADEChallengeData2016.zip"]
    path = "/ade20k/ADEChallengeData2016.zip"
    cut = len(good) // 3
    with FileServer(lifetime=60) as server:
        info = serve(server, "ade20k", files)  # the catalog knows the size
        server.no_length.add(path)
        server.drop_after[path] = cut
        download_dataset(info, tmp_path, **FAST)
        assert server.requests == [(path, None), (path, f"bytes={cut}-")]
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == good


def test_early_close_with_nothing_known_about_the_size_resumes(tmp_path):
    data = bytes(range(256)) * 300
    with FileServer({"/f.bin": data}, lifetime=60) as server:
        server.no_length.add("/f.bin")
        server.drop_after["/f.bin"] = 7000
        dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
        # the end of a body without a length is confirmed by asking for what follows it
        assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=7000-")]
    assert dest.read_bytes() == data
    # a complete body without a length: one more request confirms its end (416)
    with FileServer({"/g.bin": data}, lifetime=60) as server:
        server.no_length.add("/g.bin")
        download_file(server.url("/g.bin"), tmp_path / "g.bin", **FAST)
        assert server.requests == [("/g.bin", None), ("/g.bin", f"bytes={len(data)}-")]
    assert (tmp_path / "g.bin").read_bytes() == data
