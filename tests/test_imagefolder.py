"""The ImageFolder loader: a listed class subset of an ImageNet-style tree, decoded once into a memory-mapped cache.

Every test builds a tiny tree with PIL under a folder whose path has a space and a quote in it."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from sfhpc.config import DataConfig, DataFileError, with_files_checked
from sfhpc.data import imagefolder, load_dataset
from sfhpc.data.imagefolder import ImageFolderError, ImageFolderSpec, load_imagefolder, split_files
from sfhpc.errors import SweepError
from sfhpc.sweep import expand_file

SIZE = 32  # stored size; shorter sides are resized to round(32 * 256 / 224) = 37
# (width, height) of a class's images, in file-name order: portrait, landscape, square, wide, small (upscaled).
SHAPES = [(40, 30), (30, 52), (64, 64), (90, 41), (33, 36), (50, 45)]
CLASS_LIST = """\
# co-training subset (test)
n03  third class   # listed first: label 0

n01
n02\tsecond, with a tab
"""
LISTED = ("n03", "n01", "n02")  # label order
EXTRA = "n99"  # in the tree, not in the list
TRAIN_PER_CLASS = {"n01": 4, "n02": 3, "n03": 5, EXTRA: 2}
VAL_PER_CLASS = {"n01": 6, "n02": 5, "n03": 4, EXTRA: 2}


def _write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def _make_tree(root: Path) -> None:
    seed = 0
    for folder, counts in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for class_folder, count in counts.items():
            class_dir = root / folder / class_folder
            class_dir.mkdir(parents=True)
            for i in range(count):
                seed += 1
                # Mostly ImageNet's .JPEG, a PNG, and a grayscale JPEG (converted to RGB like ImageNet's few).
                suffix = ".png" if i == 1 else ".JPEG"
                _write_image(class_dir / f"{class_folder}_{i:02d}{suffix}", SHAPES[i % len(SHAPES)], seed,
                             "L" if i == 2 else "RGB")
            (class_dir / "notes.txt").write_text("not an image")
            (class_dir / "._hidden.JPEG").write_bytes(b"macOS resource fork")


@pytest.fixture
def tree(awkward_dir: Path) -> ImageFolderSpec:
    root = awkward_dir / "image net"
    _make_tree(root)
    classes = awkward_dir / "classes list.txt"
    classes.write_text(CLASS_LIST)
    return ImageFolderSpec(root=root, classes_file=classes, image_size=SIZE, seed=0)


def _class_of(path: Path) -> str:
    return path.parent.name


# --- labels, images, splits -----------------------------------------------------------------------------------


def test_labels_follow_the_class_list_and_names_come_from_it(tree):
    dataset = load_imagefolder(tree)
    assert dataset.class_names == ("third class", "n01", "second, with a tab")
    for name, files in split_files(tree).items():
        assert {_class_of(p) for p in files.paths} == set(LISTED), name  # the unlisted class is left out
        assert [LISTED[label] for label in files.labels] == [_class_of(p) for p in files.paths]
        np.testing.assert_array_equal(getattr(dataset, name).labels, files.labels)


def test_shapes_dtypes_and_counts(tree):
    dataset = load_imagefolder(tree)
    train_count = sum(TRAIN_PER_CLASS[c] for c in LISTED)
    val_count = sum(VAL_PER_CLASS[c] // 2 for c in LISTED)
    test_count = sum(VAL_PER_CLASS[c] - VAL_PER_CLASS[c] // 2 for c in LISTED)
    for split, count in ((dataset.train, train_count), (dataset.val, val_count), (dataset.test, test_count)):
        assert split.images.shape == (count, 3, SIZE, SIZE) and split.images.dtype == np.uint8
        assert split.labels.shape == (count,) and split.labels.dtype == np.int64


def test_each_image_is_resized_then_centre_cropped_as_pil_computes_it(tree):
    files = split_files(tree)["train"]
    index = next(i for i, p in enumerate(files.paths) if p.name == "n01_03.JPEG")  # 90 x 41, landscape
    # Shorter side 41 -> 37, longer int(37 * 90 / 41) = 81; crop offsets round((81 - 32) / 2) = 24, round(2.5) = 2.
    with Image.open(files.paths[index]) as image:
        expected = image.convert("RGB").resize((81, 37), Image.Resampling.BILINEAR).crop((24, 2, 56, 34))
    stored = load_imagefolder(tree).train.images[index]
    np.testing.assert_array_equal(stored, np.asarray(expected).transpose(2, 0, 1))


def test_decoding_matches_torchvisions_test_transform(tree):
    transforms = pytest.importorskip("torchvision.transforms")
    test_transform = transforms.Compose([transforms.Resize(round(SIZE * 256 / 224)), transforms.CenterCrop(SIZE)])
    for path in split_files(tree)["train"].paths[:8]:
        with Image.open(path) as image:
            expected = np.asarray(test_transform(image.convert("RGB"))).transpose(2, 0, 1)
        np.testing.assert_array_equal(imagefolder.decode_image(path, SIZE), expected, err_msg=str(path))


def test_val_folder_splits_into_deterministic_stratified_disjoint_halves(tree):
    first, again = split_files(tree), split_files(tree)
    for name in ("train", "val", "test"):
        assert first[name].paths == again[name].paths
    val, test = set(first["val"].paths), set(first["test"].paths)
    assert not val & test
    assert {_class_of(p) for p in val | test} == set(LISTED)
    assert val | test == {p for c in LISTED for p in (tree.root / "val" / c).glob(f"{c}_*")}
    val_counts, test_counts = Counter(map(_class_of, val)), Counter(map(_class_of, test))
    for class_folder in LISTED:
        assert val_counts[class_folder] == VAL_PER_CLASS[class_folder] // 2
        assert test_counts[class_folder] == VAL_PER_CLASS[class_folder] - VAL_PER_CLASS[class_folder] // 2
    # Shuffled: the first images of a split are not all of label 0 (cbm and attack take a split's first k).
    assert len(set(first["test"].labels[:4].tolist())) > 1


def test_a_class_keeps_its_halves_in_any_subset_and_the_seed_changes_them(tree, awkward_dir):
    halves = split_files(tree)
    only_n01 = awkward_dir / "one class.txt"
    only_n01.write_text("n02\nn01\n")
    subset = split_files(ImageFolderSpec(tree.root, only_n01, SIZE, seed=0))
    for name in ("val", "test"):
        assert {p for p in subset[name].paths if _class_of(p) == "n01"} == \
               {p for p in halves[name].paths if _class_of(p) == "n01"}
    reseeded = split_files(ImageFolderSpec(tree.root, tree.classes_file, SIZE, seed=1))
    assert set(reseeded["test"].paths) != set(halves["test"].paths)


def test_max_per_class_takes_the_first_files_of_each_class(tree):
    files = split_files(ImageFolderSpec(tree.root, tree.classes_file, SIZE, max_per_class=2))
    assert sorted(p.name for p in files["train"].paths) == sorted(f"{c}_{i:02d}{'.png' if i else '.JPEG'}"
                                                                 for c in LISTED for i in range(2))
    assert len(files["val"].paths) == len(files["test"].paths) == len(LISTED)


# --- the cache --------------------------------------------------------------------------------------------------


def test_cache_is_memory_mapped_equal_to_decoding_and_reused_without_decoding(tree, awkward_dir, monkeypatch):
    cache = awkward_dir / "run folder" / "data"
    decoded = load_imagefolder(tree)
    cached = load_imagefolder(tree, cache)
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert folder.name.startswith("imagefolder-") and not list(cache.glob(".*tmp*"))
    assert json.loads((folder / imagefolder.INDEX_NAME).read_text())["class_folders"] == list(LISTED)

    def no_decoding(path, image_size):
        raise AssertionError(f"decoded {path} although the cache exists")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    again = load_imagefolder(tree, cache)
    for name in ("train", "val", "test"):
        images = getattr(again, name).images
        assert isinstance(images, np.memmap) and Path(images.filename) == folder / f"{name}_images.npy"
        np.testing.assert_array_equal(images, getattr(decoded, name).images)
        np.testing.assert_array_equal(getattr(cached, name).labels, getattr(decoded, name).labels)
    assert again.class_names == decoded.class_names


def test_cached_arrays_are_writable_in_memory_but_never_change_the_file(tree, awkward_dir):
    cache = awkward_dir / "data"
    images = load_imagefolder(tree, cache).test.images
    before = hashlib.sha1(Path(images.filename).read_bytes()).hexdigest()
    images[0] = 0  # copy-on-write: what torch.from_numpy needs, without touching the shared cache
    del images
    assert hashlib.sha1(Path(load_imagefolder(tree, cache).test.images.filename).read_bytes()).hexdigest() == before


def test_a_damaged_cache_is_decoded_again(tree, awkward_dir):
    cache = awkward_dir / "data"
    expected = load_imagefolder(tree, cache).train.images.copy()
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    with open(folder / "train_images.npy", "r+b") as f:
        f.truncate(1000)
    np.testing.assert_array_equal(load_imagefolder(tree, cache).train.images, expected)


def test_load_dataset_dispatches_on_kind(tree, awkward_dir):
    config = DataConfig(kind="imagefolder", root=str(tree.root), classes_file=str(tree.classes_file),
                        image_size=SIZE)
    dataset = load_dataset(config, awkward_dir / "data")
    assert dataset.class_names[0] == "third class" and isinstance(dataset.test.images, np.memmap)


def test_synthetic_cache_keeps_its_file_name(awkward_dir):
    config = DataConfig(image_size=32, n_classes=2, n_train=4, n_val=2, n_test=2)
    settings = {"kind": "synthetic", "image_size": 32, "n_classes": 2, "n_train": 4, "n_val": 2, "n_test": 2,
                "seed": 0}  # the keys the name was computed from before imagefolder's existed
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    load_dataset(config, awkward_dir)
    assert [p.name for p in awkward_dir.glob("synthetic-*")] == [f"synthetic-{digest}.npz"]


# --- errors -----------------------------------------------------------------------------------------------------


def _error(spec: ImageFolderSpec) -> str:
    with pytest.raises(ImageFolderError) as info:
        load_imagefolder(spec)
    return str(info.value)


@pytest.mark.parametrize("folder", ["train", "val"])
def test_missing_train_or_val_folder(tree, folder):
    (tree.root / folder).rename(tree.root / f"{folder}.old")
    message = _error(tree)
    assert str(tree.root / folder) in message and "train/ and val/" in message


def test_missing_or_empty_class_list(tree, awkward_dir):
    absent = awkward_dir / "no such list.txt"
    assert _error(ImageFolderSpec(tree.root, absent, SIZE)) == f"class-list file {absent} does not exist"
    empty = awkward_dir / "empty list.txt"
    empty.write_text("# only a comment\n\n   \n")
    message = _error(ImageFolderSpec(tree.root, empty, SIZE))
    assert str(empty) in message and "lists no classes" in message


def test_duplicate_class_names_its_lines(tree):
    tree.classes_file.write_text(CLASS_LIST + "n01  again\n")
    message = _error(tree)
    assert f"{tree.classes_file}:6" in message and "'n01' is listed twice (first on line 4)" in message


def test_listed_class_without_a_folder_names_the_class_and_the_folder(tree):
    tree.classes_file.write_text(CLASS_LIST + "n42\n")
    message = _error(tree)
    assert "'n42'" in message and str(tree.root / "train") in message and str(tree.classes_file) in message


def test_class_folder_without_images(tree):
    for image in (tree.root / "val" / "n02").glob("n02_*"):
        image.unlink()
    message = _error(tree)
    assert str(tree.root / "val" / "n02") in message and "has no images" in message


def test_unreadable_image_is_named(tree):
    broken = tree.root / "train" / "n01" / "n01_zz.JPEG"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    message = _error(tree)
    assert f"cannot read image {broken}" in message


def test_val_folder_needs_two_images_per_class(tree):
    message = _error(ImageFolderSpec(tree.root, tree.classes_file, SIZE, max_per_class=1))
    assert "at least 2 per class" in message and str(tree.root / "val") in message


# --- the config and sweeps --------------------------------------------------------------------------------------


def _imagefolder_config(tree: ImageFolderSpec, **extra) -> dict:
    return {"kind": "imagefolder", "root": str(tree.root), "classes_file": str(tree.classes_file), **extra}


def test_checking_the_files_takes_n_classes_from_the_class_list_and_checks_a_given_one(tree):
    assert with_files_checked(DataConfig.model_validate(_imagefolder_config(tree))).n_classes == len(LISTED)
    assert with_files_checked(DataConfig.model_validate(_imagefolder_config(tree, n_classes=3))).n_classes == 3
    given = DataConfig.model_validate(_imagefolder_config(tree, n_classes=8))  # validating reads no file
    with pytest.raises(DataFileError, match=r"is 8, but classes_file .* lists 3 classes") as info:
        with_files_checked(given)
    assert info.value.key == "n_classes"


def test_config_makes_paths_absolute(tree, monkeypatch):
    monkeypatch.chdir(tree.root.parent)
    config = DataConfig(kind="imagefolder", root=tree.root.name, classes_file=tree.classes_file.name)
    assert config.root == str(tree.root) and config.classes_file == str(tree.classes_file)
    assert DataConfig.model_validate(config.model_dump()) == config  # a resolved config validates unchanged


@pytest.mark.parametrize("values, key, words", [
    ({"kind": "imagefolder"}, "root", "kind imagefolder needs root"),
    ({"kind": "synthetic", "max_per_class": 10}, "max_per_class", "only read by kind imagefolder"),
])
def test_config_keys_must_match_the_kind(values, key, words):
    with pytest.raises(ValidationError, match=words) as info:
        DataConfig.model_validate(values)
    assert info.value.errors()[0]["loc"] == (key,)


SWEEP = """\
name: imagenet-subset
executor: local
data:
  kind: imagefolder
  image_size: 32
{paths}grid:
  seed: [0, 1]
stages:
  train:
    params: {{width: 4, epochs: 1}}
"""


def test_sweep_with_an_imagefolder_expands(tree, write_sweep):
    paths = f"  root: {json.dumps(str(tree.root))}\n  classes_file: {json.dumps(str(tree.classes_file))}\n"
    plan = expand_file(write_sweep(SWEEP.format(paths=paths)))
    assert plan.sweep.data.n_classes == len(LISTED) and plan.sweep.data.root == str(tree.root)
    assert plan.sweep.data.categories == LISTED  # no category listed: each class its own, named by its folder
    assert len(plan.stage("train").points) == 2


@pytest.mark.parametrize("paths, line, key, words", [
    ({"root": "."}, 3, "data.classes_file", "kind imagefolder needs classes_file"),  # line of `data:`
    ({"root": ".", "classes_file": "absent.txt"}, 7, "data.classes_file", "does not exist"),
    ({"root": "train", "classes_file": "../classes list.txt"}, 6, "data.root", "train/ and val/"),
])
def test_bad_imagefolder_sweep_names_the_line_and_key(tree, write_sweep, paths, line, key, words):
    lines = "".join(f"  {key}: {json.dumps(str(tree.root / path))}\n" for key, path in paths.items())
    with pytest.raises(SweepError) as info:
        expand_file(write_sweep(SWEEP.format(paths=lines)))
    assert (info.value.line, info.value.key) == (line, key)
    assert words in info.value.message
