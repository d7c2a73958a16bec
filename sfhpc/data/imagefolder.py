"""ImageNet-style image folders (torchvision's ImageFolder layout), restricted to the classes of a class-list file.

Layout: ``ROOT/train/<class folder>/<image>`` and ``ROOT/val/<class folder>/<image>``. The class-list file names
the class folders to use, one per line (label = line order), each optionally followed by a readable name and by
``|`` and the class's critical-band-masking (CBM) category; ``#`` starts a comment and blank lines are skipped::

    # 50-class subset for co-training
    n02123045  tabby          | cat
    n02123159  tiger cat      | cat
    n02085782  Japanese spaniel  | dog
    n01440764  tench

The readable name is the text between the folder and ``|`` (spaces allowed); the category is the text after ``|``.
A class listed without a category is its own category, named by its folder (``n01440764`` above). CBM decides
among the categories (SCIENCE.md section 4); training and everything else use the classes.

Every image is decoded once and transformed as the test transform of SCIENCE.md section 2: shorter side resized to
round(image_size * 256 / 224) (bilinear, antialiased: PIL's resize, as torchvision's Resize on PIL images), then a
centre crop of image_size (Resize 256 + CenterCrop 224 at 224 px). The uint8 (N, 3, S, S) arrays go to ``.npy``
files in the run folder's data cache, which later jobs map from disk instead of decoding again, so a 50-class
subset (about 65k images, 10 GB at 224 px) never has to fit in memory.

Splits: ``train`` is ROOT/train. ImageNet's val folder (50 images per class) is its only labelled held-out set, so
it is split per class into halves with a seeded draw: ``val`` (model selection) gets floor(n/2) images of each
class and ``test`` the other ceil(n/2). The draw of a class depends only on the seed and the class folder's name,
so a class keeps its val/test halves in every class subset. Each split is then shuffled (seeded), so that its
first k images, which cbm and attack take when limited to k images, cover all classes.

numpy and PIL only, no torch: this module is imported on the login node.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from sfhpc.data.dataset import SPLITS, Dataset, Split

# torchvision's IMG_EXTENSIONS, compared case-insensitively (ImageNet's files end in .JPEG).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
FOLDERS = ("train", "val")
RESIZE_RATIO = 256 / 224  # Resize 256 + CenterCrop 224, at any crop size
CACHE_FORMAT = 1  # part of the cache key: bump it when decoding changes, so that old caches are not reused
INDEX_NAME = "index.json"
# Images decoded between writes to the output array: bounds memory (about 40 MB at 224 px) while keeping every
# decoding thread busy.
_CHUNK = 256


class ImageFolderError(ValueError):
    """A problem with an image folder or its class list; the message names the file or folder."""


CATEGORY_SEPARATOR = "|"  # a readable name may contain spaces, so the category needs a mark of its own


@dataclass(frozen=True)
class ClassEntry:
    """One line of a class-list file: the class folder's name, a readable name (the folder's, if none) and its CBM
    category (None: the class is its own category)."""

    folder: str
    name: str
    category: str | None = None

    @property
    def cbm_category(self) -> str:
        """The category CBM counts this class in: the listed one, or the class itself (named by its folder)."""
        return self.folder if self.category is None else self.category


@dataclass(frozen=True)
class ImageFolderSpec:
    """What to load: the tree, the class list, the stored image size, a per-class limit and the split seed."""

    root: Path
    classes_file: Path
    image_size: int = 224
    max_per_class: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class SplitFiles:
    """The image files of one split, in the split's order, with their labels (int64)."""

    paths: tuple[Path, ...]
    labels: np.ndarray


# --- class list and tree -----------------------------------------------------------------------------


def read_class_list(path: Path) -> tuple[ClassEntry, ...]:
    """The classes of a class-list file in label order. The folder name is a line's first word; the rest of the line
    is its readable name, up to a ``|`` after which comes its CBM category; text after ``#`` is a comment. Raises
    ImageFolderError for a missing, unreadable or empty file, a class listed twice, a bad category field, and a
    class without a category whose folder is also another class's category (it would silently join it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageFolderError(f"class-list file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ImageFolderError(f"cannot read class-list file {path}: {err}") from None
    entries: list[ClassEntry] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = _class_entry(line.split("#", 1)[0], f"{path}:{number}")
        if entry is None:
            continue
        if entry.folder in first_line:
            raise ImageFolderError(f"{path}:{number}: class {entry.folder!r} is listed twice (first on line "
                                   f"{first_line[entry.folder]})")
        first_line[entry.folder] = number
        entries.append(entry)
    if not entries:
        raise ImageFolderError(f"class-list file {path} lists no classes (only blank or # comment lines)")
    _check_own_categories_are_distinct(entries, path, first_line)
    return tuple(entries)


def _class_entry(text: str, where: str) -> ClassEntry | None:
    """The class of one line without its comment (None for a blank one): ``folder [name] [| category]``."""
    described, separator, category = text.partition(CATEGORY_SEPARATOR)
    words = described.split(maxsplit=1)
    if not words:
        if separator:
            raise ImageFolderError(f"{where}: no class folder before {CATEGORY_SEPARATOR!r}; a line is "
                                   f"'<class folder> [readable name] [{CATEGORY_SEPARATOR} CBM category]'")
        return None
    if not separator:
        return ClassEntry(words[0], words[1].strip() if len(words) > 1 else words[0])
    category = category.strip()
    if not category or CATEGORY_SEPARATOR in category:
        problem = "nothing" if not category else f"another {CATEGORY_SEPARATOR!r}"
        raise ImageFolderError(f"{where}: {problem} after {CATEGORY_SEPARATOR!r}: the CBM category follows one "
                               f"{CATEGORY_SEPARATOR!r} (leave out '{CATEGORY_SEPARATOR} category' for a class that "
                               "is its own category)")
    return ClassEntry(words[0], words[1].strip() if len(words) > 1 else words[0], " ".join(category.split()))


def _check_own_categories_are_distinct(entries: Sequence[ClassEntry], path: Path, lines: dict[str, int]) -> None:
    """A class without a category is its own category, named by its folder: refuse one whose folder is also listed
    as a category, which would count the two as one category without saying so."""
    listed = {entry.category: entry.folder for entry in entries if entry.category is not None}
    for entry in entries:
        if entry.category is None and entry.folder in listed:
            raise ImageFolderError(f"{path}:{lines[entry.folder]}: class {entry.folder!r} has no category, so it is "
                                   f"its own category {entry.folder!r}, but that is also the category of class "
                                   f"{listed[entry.folder]!r} (line {lines[listed[entry.folder]]}); give it "
                                   f"'{CATEGORY_SEPARATOR} {entry.folder}' to join them, or another category")


def class_categories(entries: Sequence[ClassEntry]) -> tuple[str, ...]:
    """The CBM category of each class, in label order (a class without one is its own category)."""
    return tuple(entry.cbm_category for entry in entries)


def check_root(root: Path) -> None:
    """Raise ImageFolderError unless ``root`` holds the train/ and val/ folders."""
    for name in FOLDERS:
        folder = Path(root) / name
        if not folder.is_dir():
            raise ImageFolderError(f"{folder} is not a folder: an image folder root needs train/ and val/, each "
                                   "with one folder of images per class")


def _class_images(folder: Path, entry: ClassEntry, classes_file: Path, max_per_class: int | None) -> list[Path]:
    """The images of one class folder in name order (the first ``max_per_class`` of them, if set)."""
    class_dir = folder / entry.folder
    try:
        with os.scandir(class_dir) as items:
            # scandir's entry types need no stat per file (65k of them on a cluster file system). Dot files are
            # skipped: they are macOS resource forks (._x.JPEG) or editors' leftovers, never images.
            names = sorted(item.name for item in items if item.is_file() and not item.name.startswith(".")
                           and os.path.splitext(item.name)[1].lower() in IMAGE_EXTENSIONS)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageFolderError(f"class {entry.folder!r} (listed in {classes_file}) has no folder in {folder}") from None
    if not names:
        raise ImageFolderError(f"class folder {class_dir} has no images (extensions: "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [class_dir / name for name in names[:max_per_class]]


def _list_folder(folder: Path, entries: Sequence[ClassEntry], spec: ImageFolderSpec) -> SplitFiles:
    paths: list[Path] = []
    labels: list[int] = []
    for label, entry in enumerate(entries):
        images = _class_images(folder, entry, spec.classes_file, spec.max_per_class)
        paths += images
        labels += [label] * len(images)
    return SplitFiles(tuple(paths), np.asarray(labels, dtype=np.int64))


def _halves(files: SplitFiles, entries: Sequence[ClassEntry], seed: int) -> tuple[list[int], list[int]]:
    """Indices of the val and test halves of the val folder: per class, a seeded draw of floor(n/2) for val."""
    val: list[int] = []
    test: list[int] = []
    for label, entry in enumerate(entries):
        members = np.flatnonzero(files.labels == label)
        if len(members) < 2:
            raise ImageFolderError(f"class folder {files.paths[members[0]].parent} has 1 image (after max_per_class);"
                                   " the val folder needs at least 2 per class, one for val and one for test")
        # Seeded by the folder name, not the label: a class keeps its halves whichever other classes are listed.
        drawn = np.random.default_rng([seed, zlib.crc32(entry.folder.encode())]).permutation(members)
        val += drawn[: len(members) // 2].tolist()
        test += drawn[len(members) // 2:].tolist()
    return val, test


def _shuffled(files: SplitFiles, index: Sequence[int], seed: int, split_number: int) -> SplitFiles:
    order = np.asarray(index, dtype=np.int64)[np.random.default_rng([seed, split_number]).permutation(len(index))]
    return SplitFiles(tuple(files.paths[i] for i in order), files.labels[order])


def split_files(spec: ImageFolderSpec, entries: Sequence[ClassEntry] | None = None) -> dict[str, SplitFiles]:
    """The files of the train, val and test splits (see the module docstring), without decoding any image."""
    entries = read_class_list(spec.classes_file) if entries is None else entries
    check_root(spec.root)
    train = _list_folder(spec.root / "train", entries, spec)
    held_out = _list_folder(spec.root / "val", entries, spec)
    val, test = _halves(held_out, entries, spec.seed)
    return {"train": _shuffled(train, range(len(train.paths)), spec.seed, 0),
            "val": _shuffled(held_out, val, spec.seed, 1),
            "test": _shuffled(held_out, test, spec.seed, 2)}


# --- decoding ----------------------------------------------------------------------------------------


def resized_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """``image`` with its shorter side ``size`` px and the aspect ratio kept (longer side truncated to whole pixels,
    as torchvision's Resize(int) computes it)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BILINEAR)


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square, offsets rounded as torchvision's CenterCrop rounds them."""
    width, height = image.size
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return image.crop((left, top, left + size, top + size))


def decode_image(path: Path, image_size: int) -> np.ndarray:
    """The image at ``path`` as uint8 (3, S, S) RGB: shorter side to round(S * 256 / 224), then a centre crop S."""
    try:
        with Image.open(path) as image:
            resized = resized_shorter_side(image.convert("RGB"), round(image_size * RESIZE_RATIO))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageFolderError(f"cannot read image {path}: {err}") from None
    return np.asarray(centre_crop(resized, image_size)).transpose(2, 0, 1)


def _decode_into(out: np.ndarray, paths: Sequence[Path], image_size: int) -> None:
    """Decode ``paths`` into ``out`` (N, 3, S, S) chunk by chunk, on every CPU this process may use (PIL releases the
    GIL while decoding and resizing, so threads scale)."""
    with ThreadPoolExecutor(_cpus()) as pool:
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start:start + _CHUNK]
            for offset, image in enumerate(pool.map(lambda path: decode_image(path, image_size), chunk)):
                out[start + offset] = image


def _cpus() -> int:
    """CPUs this process may use (respects SLURM/taskset affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- loading and the cache ---------------------------------------------------------------------------


def load_imagefolder(spec: ImageFolderSpec, cache_dir: Path | None = None) -> Dataset:
    """The train/val/test splits of ``spec``, with the class-list file's readable names as class names.

    Without ``cache_dir`` every image is decoded into memory (tests, small subsets). With it (a run folder's
    data/), the first job decodes the images into ``imagefolder-<key>/`` there, while other jobs that start at the
    same time wait on a lock instead of decoding too; every job then maps the arrays copy-on-write from disk: they
    behave as writable in-memory arrays (as the synthetic loader's do, so torch.from_numpy takes them without a
    warning), but the cache file never changes. The key covers the root, the class list, the image size, the
    per-class limit and the seed, not the files' contents: changing the images under the same root needs a new
    run folder (or deleting the cache).
    """
    entries = read_class_list(spec.classes_file)
    if cache_dir is None:
        return _decode_dataset(split_files(spec, entries), entries, spec.image_size)
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"imagefolder-{cache_key(spec, entries)}"
    cached = read_cache(folder)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"{folder.name}.lock"):
        cached = read_cache(folder)  # another job may have written it while this one waited for the lock
        if cached is None:
            _write_cache(folder, spec, entries)
            cached = read_cache(folder)
    if cached is None:
        raise ImageFolderError(f"the image cache {folder} cannot be read back after writing it")
    return cached


def cache_key(spec: ImageFolderSpec, entries: Sequence[ClassEntry]) -> str:
    """12 hex digits naming a cache of ``spec`` with the classes ``entries``."""
    settings = {"format": CACHE_FORMAT, "root": str(spec.root), "classes": [[e.folder, e.name] for e in entries],
                "image_size": spec.image_size, "max_per_class": spec.max_per_class, "seed": spec.seed}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _decode_dataset(files: dict[str, SplitFiles], entries: Sequence[ClassEntry], image_size: int) -> Dataset:
    splits = {}
    for name, split in files.items():
        images = np.empty((len(split.paths), 3, image_size, image_size), dtype=np.uint8)
        _decode_into(images, split.paths, image_size)
        splits[name] = Split(images, split.labels)
    return Dataset(class_names=tuple(e.name for e in entries), **splits)


def read_cache(folder: Path) -> Dataset | None:
    """The dataset cached in ``folder`` (images mapped from disk), or None when it is absent or damaged."""
    try:
        index = json.loads((folder / INDEX_NAME).read_text())
        splits = {name: Split(np.load(folder / f"{name}_images.npy", mmap_mode="c"),
                              np.load(folder / f"{name}_labels.npy")) for name in SPLITS}
        names = tuple(index["class_names"])
    except (OSError, ValueError, KeyError, TypeError):  # a truncated .npy cannot be mapped: ValueError
        return None
    if any(len(split.images) != len(split.labels) for split in splits.values()):
        return None
    return Dataset(class_names=names, **splits)


def _write_cache(folder: Path, spec: ImageFolderSpec, entries: Sequence[ClassEntry]) -> None:
    """Decode every split into a temporary folder beside ``folder``, then rename it onto ``folder``: readers see
    no cache or a complete one."""
    files = split_files(spec, entries)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        started = time.perf_counter()
        for name, split in files.items():
            images = np.lib.format.open_memmap(tmp / f"{name}_images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(split.paths), 3, spec.image_size, spec.image_size))
            _decode_into(images, split.paths, spec.image_size)
            images.flush()
            del images  # unmap before the rename
            np.save(tmp / f"{name}_labels.npy", split.labels)
        index = _index(spec, entries, files, time.perf_counter() - started)
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1))
        _install(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _index(spec: ImageFolderSpec, entries: Sequence[ClassEntry], files: dict[str, SplitFiles],
           seconds: float) -> dict:
    """What the cache holds and where it came from: classes, settings and each split's files in order."""
    return {"format": CACHE_FORMAT, "root": str(spec.root), "classes_file": str(spec.classes_file),
            "class_folders": [e.folder for e in entries], "class_names": [e.name for e in entries],
            "image_size": spec.image_size, "max_per_class": spec.max_per_class, "seed": spec.seed,
            "decode_seconds": round(seconds, 3),
            "files": {name: [str(p.relative_to(spec.root)) for p in split.paths] for name, split in files.items()}}


def _install(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` onto ``folder``. A damaged ``folder`` is removed first (a rename cannot replace a folder that
    has files; jobs that still map its files keep reading them, as unlinked files live while mapped). A complete one
    is kept: on a file system without locks, another job may have installed it meanwhile."""
    if folder.exists() and read_cache(folder) is None:
        shutil.rmtree(folder)
    try:
        os.replace(tmp, folder)
    except OSError:
        if read_cache(folder) is None:
            raise
        shutil.rmtree(tmp)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (released when the process ends, however it ends). On a file system
    without locks it proceeds unlocked: jobs may then decode in parallel, but the rename keeps the cache whole."""
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 (closed in the finally below)
    except OSError:
        handle = None
    try:
        if handle is not None:
            _lock(handle)
        yield
    finally:
        if handle is not None:
            handle.close()


def _lock(handle: IO[str]) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        pass  # no lock support (some NFS or Lustre mounts): see _exclusive
