"""Training dataset ZIPs: inspection before queueing and safe extraction on the model thread.

Rules (each violation is listed in one 400 answer):

* the archive opens as a ZIP, has at most ``dataset_max_entries`` entries, at most
  ``dataset_max_mb`` uncompressed, and no entry (nor the whole archive) compresses better than
  ``dataset_max_ratio`` (zip-bomb guard);
* no absolute paths, no ``..``, no symlinks, devices, FIFOs or sockets, no encrypted entries;
* images (.png .jpg .jpeg .webp) sit at the top level or in one single folder;
* every image has a same-stem ``.txt`` caption next to it, except ``preview*`` images, which
  are exempt (and are not training data: mflux only uses preview images for edit training);
* no image is named ``*_out`` (mflux would treat the set as edit-training pairs, which ERNIE
  does not support); every image decodes completely as PNG, JPEG or WebP (the core's
  :func:`~kiapi_core.images.probe_image`, within the host's ``max_image_pixels``, on a temporary
  copy of the member since it reads paths) and is at least 16x16;
* at least one training image.

Extraction writes only the validated images and captions, flattened into one directory, by
streaming with a byte budget, so whatever the archive claims, nothing lands outside it. It
re-checks the archive's structure; the image contents were decoded by ``check_train`` before
the job was queued (stored files do not change).
"""

from __future__ import annotations

import math
import posixpath
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kiapi_core.sdk import InvalidInput, probe_image

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_RATIO_MIN_BYTES = 1 << 20  # ratios are only judged on entries (and archives) of at least 1 MiB
_MAX_LISTED = 20
#: Used only when the host does not say (``KIAPI_MAX_IMAGE_PIXELS``, the core's default).
DEFAULT_MAX_PIXELS = 100_000_000
_TRAIN_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_CAPTION_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_entries: int = 10_000
    max_bytes: int = 4096 * 2**20
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(max_entries=settings.dataset_max_entries, max_bytes=int(settings.dataset_max_mb * 2**20),
                   max_ratio=settings.dataset_max_ratio)


@dataclass
class Plan:
    """What a valid dataset holds: training images and their captions (member names)."""

    folder: str
    images: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    previews: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.images)


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1] in _JUNK_NAMES or parts[-1].startswith("._"))


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name or "\\" in name:
        return f"{name!r}: backslashes and NUL bytes are not allowed in entry names"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"{name!r}: absolute paths are not allowed"
    if ".." in PurePosixPath(name).parts:
        return f"{name!r}: '..' path components are not allowed"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix attributes present
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            return f"{name!r}: symbolic links are not allowed"
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"{name!r}: devices, FIFOs and sockets are not allowed"
    if info.flag_bits & 0x1:
        return f"{name!r}: encrypted entries are not supported"
    return None


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def inspect(path: Path, limits: Limits, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            max_resolution: int | None = None) -> Plan:
    """Validate the dataset ZIP at ``path``; raise :class:`InvalidInput` listing every problem.

    ``max_pixels=None`` checks the structure only (no image is decoded). ``max_resolution``:
    images must still be at least 16 px on each side once mflux scales them to that area.
    """
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"dataset is not a readable ZIP archive ({exc}); upload a .zip of images "
                           "with same-stem .txt captions", problems=[str(exc)]) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            problems.append(f"dataset has {len(infos)} entries, more than the limit of {limits.max_entries} "
                            "(KIAPI_ERNIE_DATASET_MAX_ENTRIES)")
            _raise(problems)
        total = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos)
        if total > limits.max_bytes:
            problems.append(f"dataset unpacks to {total / 2**20:.0f} MiB, more than the limit of "
                            f"{limits.max_bytes / 2**20:.0f} MiB (KIAPI_ERNIE_DATASET_MAX_MB)")
        if total >= _RATIO_MIN_BYTES and total / max(packed, 1) > limits.max_ratio:
            problems.append(f"dataset compresses {total / max(packed, 1):.0f}:1, above the limit of "
                            f"{limits.max_ratio:.0f}:1 (a zip bomb?)")
        files: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            problem = _entry_problem(info)
            if problem:
                problems.append(problem)
                continue
            if (info.file_size >= _RATIO_MIN_BYTES
                    and info.file_size / max(info.compress_size, 1) > limits.max_ratio):
                problems.append(f"{info.filename!r} compresses {info.file_size / max(info.compress_size, 1):.0f}:1, "
                                f"above the limit of {limits.max_ratio:.0f}:1 (a zip bomb?)")
                continue
            if info.is_dir() or _is_junk(info.filename):
                continue
            files[info.filename] = info
        plan = _plan(files, problems)
        if not problems and max_pixels is not None:
            _check_contents(archive, files, plan, problems, max_pixels, max_resolution)
    _raise(problems)
    return plan


def _plan(files: dict[str, zipfile.ZipInfo], problems: list[str]) -> Plan:
    images = sorted(n for n in files if PurePosixPath(n).suffix.lower() in IMAGE_EXTS)
    folders = sorted({posixpath.dirname(n) for n in images})
    if len(folders) > 1:
        where = ["(top level)" if f == "" else f + "/" for f in folders]
        problems.append(f"images must sit at the top level or in one single folder, found them in: "
                        f"{_listed(where)}; move them together")
    plan = Plan(folder=folders[0] if len(folders) == 1 else "")
    missing, edit_style = [], []
    for name in images:
        stem = PurePosixPath(name).stem
        if stem.startswith("preview"):
            plan.previews.append(name)
            continue
        caption = posixpath.join(posixpath.dirname(name), stem + ".txt")
        if caption not in files:
            missing.append(f"{name} (needs {caption})")
        else:
            plan.captions[name] = caption
        if stem.endswith("_out"):
            edit_style.append(name)
        plan.images.append(name)
    if missing:
        problems.append(f"images without a same-stem .txt caption: {_listed(missing)}")
    kept = [*plan.images, *plan.captions.values()]
    hidden = [n for n in kept if posixpath.basename(n).startswith(".")]
    if hidden:
        problems.append(f"hidden file names (starting with a dot) cannot be training files: {_listed(hidden)}; "
                        "rename them")
    if edit_style:
        problems.append(f"image names ending in _out mark edit-training pairs, which ERNIE does not support: "
                        f"{_listed(edit_style)}; rename them")
    if not plan.images and len(folders) <= 1:
        extra = " (preview* images do not count)" if plan.previews else ""
        problems.append(f"dataset has no training images{extra}; add .png/.jpg/.jpeg/.webp files, each with a "
                        "same-stem .txt caption")
    return plan


def trained_size(width: int, height: int, max_resolution: int | None) -> tuple[int, int]:
    """The size mflux trains an image at (``TrainingUtil.resolve_dimensions``): scaled down to
    ``max_resolution`` squared pixels when larger, then floored to multiples of 16."""
    if max_resolution is not None and width * height > max_resolution * max_resolution:
        scale = math.sqrt(max_resolution * max_resolution / (width * height))
        width, height = int(width * scale), int(height * scale)
    return 16 * (width // 16), 16 * (height // 16)


def _check_contents(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], plan: Plan,
                    problems: list[str], max_pixels: int, max_resolution: int | None = None) -> None:
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kiapi-ernie-dataset-") as tmp:
        for name in plan.images:
            copy = Path(tmp) / "member"
            try:
                with archive.open(files[name]) as src, open(copy, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                width, height, fmt = probe_image(copy, max_pixels=max_pixels, what=name)
            except InvalidInput as exc:
                bad.append(exc.detail)
                continue
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                bad.append(f"{name} cannot be read from the archive ({exc.__class__.__name__})")
                continue
            if fmt not in _TRAIN_FORMATS:
                bad.append(f"{name} is a {fmt} image (use PNG, JPEG or WebP)")
            elif width < 16 or height < 16:
                bad.append(f"{name} is {width}x{height}; training images must be at least 16x16")
            elif 0 in trained_size(width, height, max_resolution):
                scale = math.sqrt((max_resolution or 0) ** 2 / (width * height))
                bad.append(f"{name} is {width}x{height}: scaled to max_resolution {max_resolution} ({max_resolution}² "
                           f"pixels) it becomes {int(width * scale)}x{int(height * scale)}, under 16 px on a side; "
                           "crop it closer to square or raise max_resolution")
    if bad:
        problems.append(f"unusable images: {_listed(bad)}")
    empty: list[str] = []
    for caption in plan.captions.values():
        info = files[caption]
        if info.file_size > _CAPTION_MAX_BYTES:
            empty.append(f"{caption} is larger than 64 KiB")
            continue
        try:
            text = archive.read(info).decode("utf-8")
        except (UnicodeDecodeError, zipfile.BadZipFile, OSError):
            empty.append(f"{caption} is not UTF-8 text")
            continue
        if not text.strip():
            empty.append(f"{caption} is empty")
    if empty:
        problems.append(f"unusable captions: {_listed(empty)}; write one line describing each image")


def _raise(problems: list[str]) -> None:
    if problems:
        raise InvalidInput("dataset ZIP rejected: " + "; ".join(problems), problems=problems)


def extract(path: Path, dest: Path, limits: Limits) -> Plan:
    """Re-check the structure and extract the training images and captions flat into ``dest``."""
    plan = inspect(path, limits, max_pixels=None)
    dest.mkdir(parents=True, exist_ok=True)
    budget = limits.max_bytes
    with zipfile.ZipFile(path) as archive:
        for name in [*plan.images, *plan.captions.values()]:
            base = posixpath.basename(name)
            target = dest / base
            if target.exists() or not base or base.startswith("."):
                raise InvalidInput(f"dataset entry {name!r} cannot be extracted (duplicate or hidden name)")
            with archive.open(name) as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise InvalidInput("dataset unpacks to more than its declared size; re-create the ZIP")
                    out.write(chunk)
    return plan
