"""Real datasets end to end, on miniature archives the tests build in each dataset's own
format and layout, served over loopback HTTP: catalog -> download -> prepare -> common layout.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

sys.path.insert(0, str(Path(__file__).parent))
from http_server import FileServer  # noqa: E402

from ssaseg.data import ade20k, archive, cityscapes, coco_stuff, pascal_context  # noqa: E402
from ssaseg.data.catalog import CATALOG, UnknownDatasetError, get_dataset  # noqa: E402
from ssaseg.data.download import (  # noqa: E402
    ChecksumError,
    DownloadError,
    ManualDownloadRequired,
    archive_paths,
    download_archive,
    download_dataset,
    download_file,
    verify_archives,
)
from ssaseg.data.layout import DatasetError, read_manifest, read_meta  # noqa: E402

FAST = {"progress": False, "backoff": 0.01, "retries": 3, "timeout": 10}


# --- building miniature archives -----------------------------------------------------------


def jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array.astype(np.uint8), mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def build_ade20k(drop_annotation: str | None = None):
    """ADEChallengeData2016.zip with 3 training and 2 validation images."""
    rng = np.random.default_rng(0)
    members = {"ADEChallengeData2016/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n",
               "ADEChallengeData2016/sceneCategories.txt": b""}
    expected = {}
    for split, original, prefix, n in (("train", "training", "ADE_train", 3),
                                       ("val", "validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            item = f"{prefix}_{i:08d}"
            h, w = 20 + i, 28 + 2 * i
            raw = rng.integers(0, 151, (h, w))
            raw[0, :3] = [0, 1, 150]  # the edge values are always present
            members[f"ADEChallengeData2016/images/{original}/{item}.jpg"] = jpeg(h, w, i)
            if item != drop_annotation:
                members[f"ADEChallengeData2016/annotations/{original}/{item}.png"] = png(raw)
            expected[(split, item)] = np.where(raw == 0, 255, raw - 1)
    return {"ADEChallengeData2016.zip": zip_of(members)}, expected


def build_coco_stuff(bad_size: str | None = None, bad_value: int | None = None):
    """cocostuff-10k-v1.1.zip: images/, annotations/*.mat (field S), imageLists/."""
    rng = np.random.default_rng(1)
    valid = np.array(coco_stuff.VALID_IDS)
    members, expected, lists = {}, {}, {"train": [], "test": []}
    for n, (split, original) in enumerate([("train", "train")] * 3 + [("val", "test")] * 2):
        item = f"COCO_train2014_{100 + n:012d}"
        h, w = 18 + n, 25 + n
        raw = rng.choice(np.concatenate([[0], valid]), size=(h, w))
        raw[0, :4] = [0, 1, 92, 182]
        if bad_value is not None and n == 1:
            raw[2, 2] = bad_value
        image_hw = (h + 1, w) if item == bad_size else (h, w)
        members[f"images/{item}.jpg"] = jpeg(*image_hw, n)
        buffer = io.BytesIO()
        savemat(buffer, {"S": raw.astype(np.uint16), "names": np.array(["unlabeled"]),
                         "captions": np.array(["a test image"])})
        members[f"annotations/{item}.mat"] = buffer.getvalue()
        lists[original].append(item)
        lut = {0: 255, **{raw_id: k for k, raw_id in enumerate(valid)}}
        expected[(split, item)] = np.vectorize(lut.get)(raw) if bad_value is None else None
    for original, ids in lists.items():
        members[f"imageLists/{original}.txt"] = ("\n".join(ids) + "\n").encode()
    members["imageLists/all.txt"] = ("\n".join(lists["train"] + lists["test"]) + "\n").encode()
    return {"cocostuff-10k-v1.1.zip": zip_of(members)}, expected


def rle_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in column-major order, starting with a run of 0s."""
    runs, current, count = [], 0, 0
    for value in mask.T.ravel().astype(np.uint8):
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    return runs


def rle_string(mask: np.ndarray) -> str:
    """Compressed COCO RLE of a boolean mask (written independently of the decoder)."""
    runs = rle_runs(mask)
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
            if not more:
                break
    return "".join(out)


def build_pascal_context(unknown_category: bool = False):
    """VOCtrainval_03-May-2010.tar + trainval_merged.json (Detail format, RLE masks)."""
    rng = np.random.default_rng(2)
    ids = pascal_context.CONTEXT59_IDS
    members = {"VOCdevkit/VOC2010/ImageSets/Main/train.txt": b""}
    images, annotations, expected = [], [], {}
    ann_id = 1
    for n, phase in enumerate(["train", "train", "val", "val", "train"]):
        file_name = f"2008_{n + 2:06d}.jpg"
        image_id = int(file_name[:4] + file_name[5:11])
        h, w = 16 + n, 22 + n
        members[f"VOCdevkit/VOC2010/JPEGImages/{file_name}"] = jpeg(h, w, n)
        images.append({"file_name": file_name, "image_id": image_id, "height": h,
                       "width": w, "phase": phase})
        painted = np.zeros((h, w), dtype=np.int64)
        categories = [ids[0], ids[-1], 284, int(rng.choice(ids))]
        if unknown_category and n == 1:
            categories[3] = 3  # "air conditioner": one of the 400 classes not in the 59
        for k, category in enumerate(categories):
            mask = np.zeros((h, w), dtype=bool)
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            mask[y : y + 4 + k, x : x + 6] = True  # overlapping boxes: later ones win
            painted[mask] = category
            counts = rle_string(mask) if k % 2 == 0 else rle_runs(mask)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category,
                                "segmentation": {"size": [h, w], "counts": counts},
                                "area": int(mask.sum()), "parts": []})
            ann_id += 1
        lut = {0: 255, **{raw_id: k for k, raw_id in enumerate(ids)}}
        split = "train" if phase == "train" else "val"
        if not unknown_category:
            expected[(split, file_name[:-4])] = np.vectorize(lut.get)(painted)
    data = {"info": {}, "images": images, "annos_segmentation": annotations,
            "categories": [{"category_id": i, "name": str(i)} for i in ids],
            "parts": [], "annos_occlusion": []}
    return {"VOCtrainval_03-May-2010.tar": tar_of(members),
            "trainval_merged.json": json.dumps(data).encode()}, expected


def build_cityscapes(bad_value: int | None = None):
    """leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip with real file names."""
    rng = np.random.default_rng(3)
    images = {"README": b"", "license.txt": b""}
    labels = {"README": b"", "license.txt": b""}
    expected = {}
    frames = [("train", "aachen", "000000_000019"), ("train", "bochum", "000001_000313"),
              ("val", "frankfurt", "000000_000294"), ("test", "berlin", "000000_000019")]
    for split, city, frame in frames:
        item = f"{city}_{frame}"
        h, w = 16, 32
        raw = rng.integers(0, 34, (h, w))
        raw[0, :34 - 2] = np.arange(32)  # nearly every label id appears
        raw[1, :3] = [32, 33, 255]  # 255: license plate (id -1)
        if bad_value is not None and split == "val":
            raw[3, 3] = bad_value
        images[f"leftImg8bit/{split}/{city}/{item}_leftImg8bit.png"] = png(
            rng.integers(0, 255, (h, w, 3)))
        base = f"gtFine/{split}/{city}/{item}_gtFine_"
        labels[base + "labelIds.png"] = png(raw)
        labels[base + "color.png"] = png(np.zeros((h, w, 3)))
        labels[base + "instanceIds.png"] = png(raw)
        labels[base + "polygons.json"] = b'{"imgHeight": 16, "imgWidth": 32, "objects": []}'
        table = {i: 255 for i in range(34)} | {255: 255} | cityscapes.LABEL_TO_TRAIN
        if split != "test" and bad_value is None:
            expected[(split, item)] = np.vectorize(table.get)(raw)
    return {"leftImg8bit_trainvaltest.zip": zip_of(images),
            "gtFine_trainvaltest.zip": zip_of(labels)}, expected


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def server():
    with FileServer(lifetime=60) as s:
        yield s


def serve(server: FileServer, name: str, files: dict[str, bytes]):
    """Serve ``files`` and return the catalog entry of ``name`` pointing at them, with their
    real sizes and sha256 (the real catalog's digests belong to the real archives)."""
    for filename, data in files.items():
        server.files[f"/{name}/{filename}"] = data
    info = CATALOG[name]
    archives = tuple(
        replace(a, url=server.url(f"/{name}/{a.filename}"), size=len(files[a.filename]),
                md5=None, sha1=None, sha256=hashlib.sha256(files[a.filename]).hexdigest())
        for a in info.archives
    )
    return replace(info, archives=archives)


def check_prepared(out: Path, name: str, expected: dict, raw_files: dict[str, bytes]):
    manifest = read_manifest(out)
    info = get_dataset(name)
    counts = {}
    for split, _ in expected:
        counts[split] = counts.get(split, 0) + 1
    assert {s: e["count"] for s, e in manifest["splits"].items()} == counts
    meta = read_meta(out)
    assert meta.classes == list(info.classes) and meta.ignore_index == 255
    assert meta.num_classes == {"ade20k": 150, "coco_stuff10k": 171, "pascal_context59": 59,
                                "cityscapes": 19}[name]
    hist = np.zeros(meta.num_classes + 1, dtype=np.int64)
    for (split, item), want in expected.items():
        label = read_label(out / split / "labels" / f"{item}.png")
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, want)
        hist[: meta.num_classes] += np.bincount(want[want != 255], minlength=meta.num_classes)
        hist[-1] += int((want == 255).sum())
        image = next((out / split / "images").glob(f"{item}.*"))
        assert Image.open(image).size == (want.shape[1], want.shape[0])
    total = np.sum([manifest["splits"][s]["label_histogram"] for s in counts], axis=0)
    np.testing.assert_array_equal(total, hist)


def no_temp_dirs(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".") and "tmp" in p.name]


# --- each dataset, end to end --------------------------------------------------------------


def test_ade20k_download_and_prepare(server, tmp_path):
    files, expected = build_ade20k()
    info = serve(server, "ade20k", files)
    raw, out = tmp_path / "raw", tmp_path / "data" / "ade20k"
    download_dataset(info, raw, **FAST)
    assert (raw / "ADEChallengeData2016.zip").read_bytes() == files["ADEChallengeData2016.zip"]
    manifest = ade20k.prepare(raw, out, check_counts=False)
    assert manifest["splits"]["train"]["count"] == 3
    check_prepared(out, "ade20k", expected, files)
    # images are copied byte for byte
    with zipfile.ZipFile(raw / "ADEChallengeData2016.zip") as z:
        original = z.read("ADEChallengeData2016/images/validation/ADE_val_00000002.jpg")
    assert (out / "val" / "images" / "ADE_val_00000002.jpg").read_bytes() == original


def test_coco_stuff_download_and_prepare(server, tmp_path):
    files, expected = build_coco_stuff()
    info = serve(server, "coco_stuff10k", files)
    raw, out = tmp_path / "raw", tmp_path / "data" / "coco_stuff10k"
    download_dataset(info, raw, **FAST)
    coco_stuff.prepare(raw, out, check_counts=False)
    check_prepared(out, "coco_stuff10k", expected, files)
    # the id mapping: 1 = person -> 0, 92 = banner -> 80, 182 = wood -> 170, 0 -> ignore
    names = get_dataset("coco_stuff10k").classes
    label = read_label(out / "train" / "labels" / "COCO_train2014_000000000100.png")
    assert label[0, :4].tolist() == [255, 0, 80, 170]
    assert (names[0], names[80], names[170]) == ("person", "banner", "wood")
    # the official split: test.txt is our val
    assert sorted(p.stem for p in (out / "val" / "images").iterdir()) == [
        "COCO_train2014_000000000103", "COCO_train2014_000000000104"]


def test_pascal_context_download_and_prepare(server, tmp_path):
    files, expected = build_pascal_context()
    info = serve(server, "pascal_context59", files)
    raw, out = tmp_path / "raw", tmp_path / "data" / "pascal_context59"
    download_dataset(info, raw, **FAST)
    pascal_context.prepare(raw, out, check_counts=False)
    check_prepared(out, "pascal_context59", expected, files)
    names = get_dataset("pascal_context59").classes
    # 459-class ids -> 59 classes: 2 aeroplane -> 0, 284 person -> 36, 458 wood -> 58
    lut = pascal_context.LUT
    assert (names[lut[2]], names[lut[284]], names[lut[458]]) == ("aeroplane", "person", "wood")
    assert lut[0] == 255


def test_rle_decoder_matches_known_vector():
    # 2x2 mask, column-major [0, 1, 1, 0]: runs [1, 2, 1] -> "121"
    assert pascal_context.rle_counts_from_string("121") == [1, 2, 1]
    mask = pascal_context.decode_rle({"size": [2, 2], "counts": "121"}, "test")
    assert mask.tolist() == [[False, True], [True, False]]
    rng = np.random.default_rng(5)
    for _ in range(20):
        m = rng.random((7, 9)) < rng.random()
        decoded = pascal_context.decode_rle({"size": [7, 9], "counts": rle_string(m)}, "t")
        np.testing.assert_array_equal(decoded, m)


def test_cityscapes_manual_archives_then_prepare(server, tmp_path):
    files, expected = build_cityscapes()
    raw, out = tmp_path / "raw", tmp_path / "data" / "cityscapes"
    # nothing placed yet: the step explains which files go where, and fetches nothing
    with pytest.raises(ManualDownloadRequired) as err:
        download_dataset("cityscapes", raw, **FAST)
    message = str(err.value)
    for filename in files:
        assert str((raw / filename).resolve()) in message
    assert "cityscapes-dataset.com" in message and "login" in message.lower()
    assert server.requests == []
    # the user puts the archives in place by hand: they are verified (no published digest:
    # structure + sha256 recorded on first sight), then prepared
    for filename, data in files.items():
        (raw / filename).write_bytes(data)
    paths = download_dataset("cityscapes", raw, **FAST)
    assert [p.name for p in paths] == list(files)
    for filename, data in files.items():
        record = (raw / f"{filename}.sha256").read_text().split()[0]
        assert record == hashlib.sha256(data).hexdigest()
    cityscapes.prepare(raw, out, check_counts=False)
    check_prepared(out, "cityscapes", expected, files)
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == [
        "aachen_000000_000019.png", "bochum_000001_000313.png"]
    assert not (out / "test").exists()
    # a hand-placed file changed later (same size) no longer matches its record
    data = bytearray(files["gtFine_trainvaltest.zip"])
    data[-30] ^= 0xFF
    (raw / "gtFine_trainvaltest.zip").write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        download_dataset("cityscapes", raw, **FAST)
    assert err.value.moved_to.exists() and ".corrupt-" in err.value.moved_to.name
    assert not (raw / "gtFine_trainvaltest.zip").exists()


def test_cityscapes_from_a_mirror(server, tmp_path):
    files, expected = build_cityscapes()
    for filename, data in files.items():
        server.files[f"/mirror/{filename}"] = data
    raw = tmp_path / "raw"
    download_dataset("cityscapes", raw, mirror=server.url("/mirror"), **FAST)
    assert {p for p, _ in server.requests} == {f"/mirror/{f}" for f in files}
    cityscapes.prepare(raw, tmp_path / "out", check_counts=False)
    check_prepared(tmp_path / "out", "cityscapes", expected, files)


# --- downloads: resume, corruption, no re-fetch ----------------------------------------------


def test_resume_after_dropped_connection_gives_identical_bytes(server, tmp_path):
    files, _ = build_ade20k()
    info = serve(server, "ade20k", files)
    path = "/ade20k/ADEChallengeData2016.zip"
    cut = len(files["ADEChallengeData2016.zip"]) // 3
    server.drop_after[path] = cut
    download_dataset(info, tmp_path, **FAST)
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == files[
        "ADEChallengeData2016.zip"]
    assert server.requests == [(path, None), (path, f"bytes={cut}-")]
    assert not list(tmp_path.glob("*.part"))


def test_server_without_range_support_restarts_the_file(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["/f.bin"] = data
    server.no_range.add("/f.bin")
    server.drop_after["/f.bin"] = 5000
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert dest.read_bytes() == data


def test_corrupt_bytes_raise_and_are_kept_aside(server, tmp_path):
    files, _ = build_ade20k()
    info = serve(server, "ade20k", files)
    server.corrupt.add("/ade20k/ADEChallengeData2016.zip")
    with pytest.raises(ChecksumError) as err:
        download_dataset(info, tmp_path, **FAST)
    assert "sha256" in str(err.value)
    kept = err.value.moved_to
    assert kept.parent == tmp_path and kept.name.startswith("ADEChallengeData2016.zip.corrupt-")
    assert kept.read_bytes() != files["ADEChallengeData2016.zip"]
    assert len(kept.read_bytes()) == len(files["ADEChallengeData2016.zip"])
    assert not (tmp_path / "ADEChallengeData2016.zip").exists()
    assert not list(tmp_path.glob("*.part"))
    # the next run (server fixed) downloads a good copy; the corrupt one is still kept
    server.corrupt.clear()
    download_dataset(info, tmp_path, **FAST)
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == files[
        "ADEChallengeData2016.zip"]
    assert kept.exists()


def test_verified_archive_is_not_fetched_again(server, tmp_path):
    files, _ = build_pascal_context()
    info = serve(server, "pascal_context59", files)
    download_dataset(info, tmp_path, **FAST)
    assert len(server.requests) == 2
    server.requests.clear()
    download_dataset(info, tmp_path, **FAST)
    assert download_archive(info, "trainval_merged.json", tmp_path, **FAST).is_file()
    assert verify_archives(info, tmp_path) == archive_paths(info, tmp_path)
    assert server.requests == []
    # one archive missing (not behind a login): says to run the download step
    (tmp_path / "trainval_merged.json").unlink()
    with pytest.raises(DownloadError, match=r"(?s)trainval_merged\.json.*download --dataset"):
        verify_archives(info, tmp_path)


def test_existing_corrupt_archive_is_moved_aside_and_fetched_again(server, tmp_path):
    files, _ = build_ade20k()
    info = serve(server, "ade20k", files)
    (tmp_path / "ADEChallengeData2016.zip").write_bytes(b"not the archive")
    download_dataset(info, tmp_path, **FAST)
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == files[
        "ADEChallengeData2016.zip"]
    [kept] = tmp_path.glob("ADEChallengeData2016.zip.corrupt-*")
    assert kept.read_bytes() == b"not the archive"


def test_truncated_archive_without_published_checksum_is_rejected(server, tmp_path):
    files, _ = build_coco_stuff()
    data = files["cocostuff-10k-v1.1.zip"]
    server.files["/c/cocostuff-10k-v1.1.zip"] = data[: len(data) // 2]  # server truncates
    with pytest.raises(ChecksumError, match="cannot be opened"):
        download_dataset("coco_stuff10k", tmp_path, mirror=server.url("/c"), **FAST)
    assert not (tmp_path / "cocostuff-10k-v1.1.zip").exists()
    assert list(tmp_path.glob("cocostuff-10k-v1.1.zip.corrupt-*"))


def test_transient_errors_are_retried_with_exponential_backoff(server, tmp_path):
    server.files["/f.bin"] = b"x" * 1000
    server.fail_first["/f.bin"] = 3
    delays = []
    options = {**FAST, "backoff": 0.5, "retries": 5, "sleep": delays.append}
    download_file(server.url("/f.bin"), tmp_path / "f.bin", **options)
    assert delays == [0.5, 1.0, 2.0]
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 1000
    # a server that stays down: gives up after `retries`, with a clear error
    server.fail_first["/g.bin"], server.files["/g.bin"] = 99, b"y"
    with pytest.raises(DownloadError, match="giving up after 2 retries.*HTTP 503"):
        download_file(server.url("/g.bin"), tmp_path / "g.bin",
                      **{**options, "retries": 2})


def test_checksum_recorded_on_first_download_is_enforced_later(server, tmp_path):
    files, _ = build_coco_stuff()
    good = files["cocostuff-10k-v1.1.zip"]
    server.files["/m/cocostuff-10k-v1.1.zip"] = good
    mirror = server.url("/m")
    download_dataset("coco_stuff10k", tmp_path, mirror=mirror, **FAST)  # nothing published
    record = tmp_path / "cocostuff-10k-v1.1.zip.sha256"
    assert record.read_text() == f"{hashlib.sha256(good).hexdigest()}  cocostuff-10k-v1.1.zip\n"
    # the local copy gets damaged: moved aside, fetched again, checked against the record
    damaged = bytearray(good)
    damaged[10] ^= 0xFF
    (tmp_path / "cocostuff-10k-v1.1.zip").write_bytes(bytes(damaged))
    download_dataset("coco_stuff10k", tmp_path, mirror=mirror, **FAST)
    assert (tmp_path / "cocostuff-10k-v1.1.zip").read_bytes() == good
    assert len(list(tmp_path.glob("cocostuff-10k-v1.1.zip.corrupt-*"))) == 1
    # the server starts sending other bytes: they do not match the record
    (tmp_path / "cocostuff-10k-v1.1.zip").unlink()
    server.files["/m/cocostuff-10k-v1.1.zip"] = bytes(damaged)
    with pytest.raises(ChecksumError, match="was recorded"):
        download_dataset("coco_stuff10k", tmp_path, mirror=mirror, **FAST)
    assert not (tmp_path / "cocostuff-10k-v1.1.zip").exists()


def test_missing_file_on_server_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/nothing.zip"), tmp_path / "nothing.zip", **FAST)


# --- bad archives: clear errors, nothing half-prepared ---------------------------------------


def test_missing_file_inside_archive(tmp_path):
    files, _ = build_ade20k(drop_annotation="ADE_train_00000002")
    (tmp_path / "ADEChallengeData2016.zip").write_bytes(files["ADEChallengeData2016.zip"])
    out = tmp_path / "data" / "ade20k"
    with pytest.raises(DatasetError, match="ADE_train_00000002.png"):
        ade20k.prepare(tmp_path, out, check_counts=False)
    assert not out.exists() and no_temp_dirs(out.parent)


def test_label_size_differs_from_image(tmp_path):
    files, _ = build_coco_stuff(bad_size="COCO_train2014_000000000101")
    (tmp_path / "cocostuff-10k-v1.1.zip").write_bytes(files["cocostuff-10k-v1.1.zip"])
    out = tmp_path / "data" / "coco"
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000101\.mat.*label map is"):
        coco_stuff.prepare(tmp_path, out, check_counts=False)
    assert not out.exists() and no_temp_dirs(out.parent)


@pytest.mark.parametrize("dataset", ["coco_stuff10k", "cityscapes", "pascal_context59"])
def test_unknown_label_values(tmp_path, dataset):
    if dataset == "coco_stuff10k":
        files, _ = build_coco_stuff(bad_value=12)  # an unused COCO thing id
        prepare, value, where = coco_stuff.prepare, 12, "COCO_train2014_000000000101.mat"
    elif dataset == "cityscapes":
        files, _ = build_cityscapes(bad_value=40)
        prepare, value, where = cityscapes.prepare, 40, "frankfurt_000000_000294_gtFine"
    else:
        files, _ = build_pascal_context(unknown_category=True)
        prepare, value, where = pascal_context.prepare, 3, "2008_000003.jpg"
    for filename, data in files.items():
        (tmp_path / filename).write_bytes(data)
    out = tmp_path / "data" / dataset
    with pytest.raises(DatasetError, match=rf"{where}.*unknown label values \[{value}\]"):
        prepare(tmp_path, out, check_counts=False)
    assert not out.exists() and no_temp_dirs(out.parent)


def test_disk_full_while_extracting_leaves_previous_copy_intact(tmp_path, monkeypatch):
    files, expected = build_cityscapes()
    for filename, data in files.items():
        (tmp_path / filename).write_bytes(data)
    out = tmp_path / "data" / "cityscapes"
    cityscapes.prepare(tmp_path, out, check_counts=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    calls = {"n": 0}
    real_write = archive._write_chunk

    def full_disk(handle, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, data)

    monkeypatch.setattr(archive, "_write_chunk", full_disk)
    with pytest.raises(DatasetError, match=r"disk full while writing .*bochum_000001_000313"):
        cityscapes.prepare(tmp_path, out, check_counts=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the complete copy is untouched
    assert no_temp_dirs(out.parent)

    # and with no previous copy, nothing is left that looks like a dataset
    fresh = tmp_path / "data" / "fresh"
    calls["n"] = 0
    with pytest.raises(DatasetError, match="disk full"):
        cityscapes.prepare(tmp_path, fresh, check_counts=False)
    assert not fresh.exists() and no_temp_dirs(fresh.parent)


def test_official_counts_are_checked_by_default(tmp_path):
    files, _ = build_ade20k()
    (tmp_path / "ADEChallengeData2016.zip").write_bytes(files["ADEChallengeData2016.zip"])
    out = tmp_path / "data" / "ade20k"
    with pytest.raises(DatasetError, match=r"train: 3 images, official 20210"):
        ade20k.prepare(tmp_path, out)
    assert not out.exists()


def test_missing_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="download --dataset ade20k"):
        ade20k.prepare(tmp_path, tmp_path / "out")
    with pytest.raises(DatasetError, match="cityscapes-dataset.com"):
        cityscapes.prepare(tmp_path, tmp_path / "out")


def test_truncated_archive_given_to_prepare(tmp_path):
    files, _ = build_ade20k()
    data = files["ADEChallengeData2016.zip"]
    (tmp_path / "ADEChallengeData2016.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        ade20k.prepare(tmp_path, tmp_path / "out", check_counts=False)


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_entries():
    sizes = {"ade20k": 150, "coco_stuff10k": 171, "pascal_context59": 59, "cityscapes": 19}
    for name, k in sizes.items():
        info = get_dataset(name)
        assert info.num_classes == k == len(info.palette) == len(set(info.classes))
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in info.palette)
        assert info.ignore_index == 255
        assert set(info.split_map) == {"train", "val"}
        assert info.archives and all(a.filename and a.url for a in info.archives)
        info.meta()  # a valid DatasetMeta
    assert get_dataset("ade20k").reduce_zero_label
    assert get_dataset("cityscapes").needs_login and get_dataset("cityscapes").login_instructions
    assert get_dataset("pascal_context59").eval.mode == "slide"
    assert get_dataset("cityscapes").crop_size == (512, 1024)
    # every id table covers exactly the classes
    assert sorted(set(cityscapes.LABEL_TO_TRAIN.values())) == list(range(19))
    assert len(coco_stuff.VALID_IDS) == 171 and len(pascal_context.CONTEXT59_IDS) == 59


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownDatasetError) as err:
        get_dataset("ade2k")
    assert "known datasets: ade20k, cityscapes" in str(err.value)
    assert "Did you mean 'ade20k'?" in str(err.value)
    with pytest.raises(KeyError):
        get_dataset("imagenet")


def test_synthetic_entry_reads_the_synthetic_module():
    synthetic = pytest.importorskip("ssaseg.data.synthetic")
    info = get_dataset("synthetic")
    assert list(info.classes) == list(synthetic.CLASSES)
    assert [tuple(c) for c in info.palette] == [tuple(c) for c in synthetic.PALETTE]
