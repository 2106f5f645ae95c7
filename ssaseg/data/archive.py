"""What every real dataset's ``prepare`` shares: reading members out of the downloaded
archives, checking and converting label maps, and writing the common layout atomically.

Members are read straight out of the zip/tar (no full extraction next to the output, which
would need the disk twice over); every byte written goes through :func:`write_file`, which
turns a full disk into a :class:`~ssaseg.data.layout.DatasetError` that names the file. The
output is assembled in a temporary directory (:func:`ssaseg.atomic_io.atomic_directory`) that
replaces ``out_dir`` only once the manifest has been written, so a failure at any point
leaves either nothing or the previous complete copy.

Nothing in an archive decides where a file is written. An archive holding a member whose name
is absolute or has a ``..`` component is refused when opened; a member that is a symbolic or
hard link is refused when read; and every id or file name taken from archive content (list
files, member names, annotation files) must be a plain file name
(:func:`plain_name`) whose output path resolves inside the dataset directory
(:meth:`SplitWriter.add`), or the step fails naming it.
"""

from __future__ import annotations

import errno
import io
import logging
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ssaseg import atomic_io
from ssaseg.data.catalog import DatasetInfo
from ssaseg.data.layout import DatasetError, write_manifest, write_meta

log = logging.getLogger(__name__)

UNKNOWN = -1  # marks a label value a lookup table does not accept
IMAGE_EXTENSIONS = (".jpg", ".png")


# --- reading archives ----------------------------------------------------------------------


def _unsafe_member(name: str) -> str | None:
    """Why the member name ``name`` points outside the archive's folder, or None."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "a path with a '..' component"
    if "\x00" in name:
        return "a name with a NUL byte"
    return None


def _tar_name(name: str) -> str:
    """A tar member's name without the leading ``./`` that some tar programs write."""
    while name.startswith("./"):
        name = name[2:]
    return name


class ArchiveReader:
    """Random access to the members of a zip or (uncompressed or compressed) tar file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"archive {self.path} not found; run the download step first")
        self._links: dict[str, str] = {}  # member name -> link target (never followed)
        try:
            if zipfile.is_zipfile(self.path):
                self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self.path)
                self._tar = None
                infos = self._zip.infolist()
                self._check_names(i.filename for i in infos)
                self._members = {i.filename.rstrip("/"): i for i in infos if not i.is_dir()}
                for name, info in self._members.items():
                    if stat.S_ISLNK(info.external_attr >> 16):  # the target is the content
                        target = self._zip.read(info)[:200].decode("utf-8", "replace")
                        self._links[name] = target
            elif tarfile.is_tarfile(self.path):
                self._zip = None
                self._tar = tarfile.open(self.path)
                entries = list(self._tar)
                self._check_names(m.name for m in entries)
                self._members = {_tar_name(m.name): m for m in entries
                                 if m.isfile() or m.issym() or m.islnk()}
                for name, member in self._members.items():
                    if not member.isfile():
                        self._links[name] = member.linkname
            else:
                raise DatasetError(
                    f"{self.path} is neither a zip nor a tar archive (truncated or corrupt "
                    "download?); delete it and run the download step again"
                )
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
            raise DatasetError(
                f"{self.path} cannot be read as an archive ({err}); it is probably truncated "
                "or corrupt: delete it and run the download step again"
            ) from err

    def _check_names(self, names: Iterable[str]) -> None:
        for name in names:
            if reason := _unsafe_member(name):
                self.close()
                raise DatasetError(
                    f"{self.path.name} holds the member {name!r}, {reason} that points outside "
                    "its folder: refusing the archive (no official release has one; it is "
                    "damaged or was tampered with)"
                )

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        (self._zip or self._tar).close()

    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``; a missing member is an error naming it."""
        if name not in self._members:
            raise DatasetError(
                f"{self.path.name} has no member {name!r}: the archive is incomplete or not "
                "the official release; download it again"
            )
        if name in self._links:
            raise DatasetError(
                f"{self.path.name}: member {name!r} is a link (to {self._links[name]!r}), not a "
                "file: refusing to follow it (no official release has links)"
            )
        try:
            if self._zip is not None:
                return self._zip.read(self._members[name])
            handle = self._tar.extractfile(self._members[name])
            return handle.read()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise DatasetError(
                f"cannot read {name!r} from {self.path.name} ({err}); the archive is corrupt: "
                "delete it and run the download step again"
            ) from err

    def find_root(self, marker: str) -> str:
        """The folder prefix under which ``marker`` (a relative path) sits in the archive, so
        that archives repacked with or without a top-level folder both work."""
        hits = sorted(
            (n[: -len(marker)] for n in self._members if n == marker or n.endswith("/" + marker)),
            key=len,
        )
        if not hits:
            raise DatasetError(
                f"{self.path.name} has no {marker!r}: this is not the expected archive, or it "
                "is incomplete; download it again"
            )
        return hits[0]

    def find_prefix(self, fragment: str) -> str:
        """The folder prefix in front of the first member path containing ``fragment``
        (e.g. ``"images/training/"``), for archives with or without a top-level folder."""
        hits = sorted((n[: n.index(fragment)] for n in self._members if fragment in n), key=len)
        if not hits:
            raise DatasetError(
                f"{self.path.name} has nothing under {fragment!r}: this is not the expected "
                "archive, or it is incomplete; download it again"
            )
        return hits[0]

    def listdir(self, prefix: str) -> list[str]:
        """Member names directly or indirectly under folder ``prefix`` (sorted)."""
        prefix = prefix.rstrip("/") + "/"
        return sorted(n for n in self._members if n.startswith(prefix))


def open_archive(raw_dir: Path, info: DatasetInfo, filename: str) -> ArchiveReader:
    """Open one of ``info``'s archives in ``raw_dir``, explaining how to get it if absent."""
    path = Path(raw_dir) / filename
    if not path.is_file():
        how = (
            info.login_instructions
            if info.needs_login
            else f"run `python -m ssaseg download --dataset {info.name}` first"
        )
        raise DatasetError(f"{path} not found. {how}")
    return ArchiveReader(path)


# --- writing -------------------------------------------------------------------------------


def plain_name(value: str, source: str, what: str = "id") -> str:
    """``value`` if it is one plain file name (no folder, not ``.``/``..``, no NUL): ids and
    file names read from an archive become output file names. Otherwise a
    :class:`DatasetError` naming ``source`` and the value."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value
            or "\x00" in value):
        raise DatasetError(
            f"{source}: {what} {value!r} is not a plain file name (it holds a folder, '..' or "
            "an absolute path, which would write outside the dataset directory): refusing it"
        )
    return value


def inside(root: Path, *parts: str, source: str = "") -> Path:
    """``root`` joined with ``parts``, checked to resolve inside ``root``."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"{source or path}: the output path {path} resolves outside {root}: "
                           "refusing it")
    return path


def _write_chunk(handle, data: bytes) -> None:
    """The one place output bytes hit the disk (tests replace it to simulate a full disk)."""
    handle.write(data)


def write_file(path: Path, data: bytes, source: str = "") -> None:
    """Write ``data`` to ``path``; a full disk (or quota) is a :class:`DatasetError` naming
    the file and what it came from."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for start in range(0, max(len(data), 1), 1 << 20):
                _write_chunk(handle, data[start : start + (1 << 20)])
    except OSError as err:
        origin = f" (from {source})" if source else ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DatasetError(
                f"disk full while writing {path}{origin}: {err.strerror}. Free space on "
                f"{path.anchor or '/'} (the prepared dataset needs about as much as its "
                "archives) and run prepare again; nothing was left half-prepared"
            ) from err
        raise DatasetError(f"cannot write {path}{origin}: {err}") from err


def png_bytes(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def image_size(data: bytes, source: str) -> tuple[int, int]:
    """(height, width) of an encoded image, reading only its header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as err:  # PIL raises several types for undecodable data
        raise DatasetError(f"{source}: not a readable image ({err})") from err
    return height, width


def decode_label_png(data: bytes, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"{source}: label map must be single-channel, got mode {image.mode}"
                )
            return np.asarray(image)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(f"{source}: not a readable label map ({err})") from err


# --- labels --------------------------------------------------------------------------------


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A table ``lut[raw] -> output id``; values absent from ``mapping`` map to UNKNOWN."""
    lut = np.full(size, UNKNOWN, dtype=np.int32)
    for raw, out in mapping.items():
        lut[raw] = out
    return lut


def convert_labels(raw: np.ndarray, lut: np.ndarray, source: str, allowed: str) -> np.ndarray:
    """Map raw label values through ``lut``; any value it does not accept is an error that
    names the file, the values and what is allowed."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DatasetError(f"{source}: label map must be 2-D, got shape {raw.shape}")
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])[:10].tolist()
        raise DatasetError(f"{source}: unknown label values {bad}; expected {allowed}")
    out = lut[raw]
    if (out == UNKNOWN).any():
        bad = np.unique(raw[out == UNKNOWN])[:10].tolist()
        raise DatasetError(f"{source}: unknown label values {bad}; expected {allowed}")
    return out.astype(np.uint8)


def check_same_size(image_hw: tuple[int, int], label_hw: tuple[int, int], what: str) -> None:
    if tuple(image_hw) != tuple(label_hw):
        raise DatasetError(
            f"{what}: label map is {label_hw[1]}x{label_hw[0]} (WxH) but its image is "
            f"{image_hw[1]}x{image_hw[0]}; the archive does not match the official release"
        )


class SplitWriter:
    """Writes one split's (image, label) pairs into the common layout."""

    def __init__(self, root: Path, split: str) -> None:
        self.root, self.split = root, split
        self.count = 0
        self._ids: set[str] = set()

    def add(self, item_id: str, image: bytes, image_ext: str, label: np.ndarray,
            image_source: str, label_source: str) -> None:
        plain_name(item_id, image_source)
        if image_ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"image extension {image_ext!r} is not one of {IMAGE_EXTENSIONS}")
        if item_id in self._ids:
            raise DatasetError(f"{label_source}: id {item_id!r} appears twice in {self.split}")
        self._ids.add(item_id)
        check_same_size(image_size(image, image_source), label.shape, label_source)
        image_path = inside(self.root, self.split, "images", f"{item_id}{image_ext}",
                            source=image_source)
        label_path = inside(self.root, self.split, "labels", f"{item_id}.png",
                            source=label_source)
        write_file(image_path, image, image_source)
        write_file(label_path, png_bytes(label), label_source)
        self.count += 1


@contextmanager
def prepared_dataset(out_dir: Path, info: DatasetInfo) -> Iterator[Path]:
    """Yield an empty temporary directory holding ``meta.json``; on a clean exit write the
    manifest (checking every label map) and move it to ``out_dir``; on any error remove it."""
    out_dir = Path(out_dir)
    with atomic_io.atomic_directory(out_dir) as tmp:
        write_meta(tmp, info.meta())
        yield tmp
        write_manifest(tmp, [split for split, _ in info.splits])
    log.info("prepared %s in %s", info.name, out_dir)


def check_counts(info: DatasetInfo, counts: dict[str, int], enabled: bool) -> None:
    """Compare the number of prepared images per split with the official release."""
    expected = info.counts
    wrong = {s: (n, expected[s]) for s, n in counts.items() if s in expected and n != expected[s]}
    if not wrong:
        return
    text = ", ".join(f"{s}: {n} images, official {e}" for s, (n, e) in wrong.items())
    if enabled:
        raise DatasetError(
            f"{info.name}: {text}. The archives are not the complete official release; "
            "download them again, or pass check_counts=False to prepare a subset on purpose"
        )
    log.warning("%s: %s (check_counts=False)", info.name, text)


def progress(items: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, total=total, desc=desc, unit="img", leave=False, mininterval=1.0)


def stem(name: str) -> str:
    return PurePosixPath(name).stem

