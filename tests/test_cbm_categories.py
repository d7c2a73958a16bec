"""CBM decides among categories (SCIENCE.md sections 4 and 8): the study's class list with its 16 categories, the
class list's category field, the data config's class-to-category map, and the decision by mean probability over
each category's classes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from sfhpc.config import PROJECT_ROOT, DataConfig, DataFileError, with_files_checked
from sfhpc.data.imagefolder import ImageFolderError, class_categories, read_class_list
from sfhpc.data.synthetic import CLASS_NAMES
from sfhpc.evaluation import cbm

STUDY_LIST = PROJECT_ROOT / "sweeps" / "imagenet50_classes.txt"
# SCIENCE.md section 8: classes per CBM category (Geirhos et al.'s 16-class ImageNet) in the study's 50.
STUDY_COUNTS = {"airplane": 1, "bear": 4, "bicycle": 2, "bird": 4, "boat": 4, "bottle": 4, "car": 3, "cat": 5,
                "chair": 4, "clock": 3, "dog": 5, "elephant": 2, "keyboard": 2, "knife": 1, "oven": 1, "truck": 5}


# --- the study's class list -------------------------------------------------------------------------------------


def test_the_study_list_has_its_50_classes_in_16_categories():
    entries = read_class_list(STUDY_LIST)
    assert len(entries) == 50 and len({e.folder for e in entries}) == 50
    assert all(e.folder.startswith("n") and len(e.folder) == 9 for e in entries)  # WordNet ids
    assert Counter(class_categories(entries)) == STUDY_COUNTS
    by_folder = {e.folder: e for e in entries}
    # Spot checks against SCIENCE.md section 8, names with spaces included.
    assert (by_folder["n02133161"].name, by_folder["n02133161"].category) == ("American black bear", "bear")
    assert (by_folder["n04111531"].name, by_folder["n04111531"].category) == ("rotisserie", "oven")
    assert (by_folder["n03770679"].name, by_folder["n03770679"].category) == ("minivan", "truck")
    assert "not given in its public material" not in STUDY_LIST.read_text()


def test_the_study_list_fills_in_the_data_config(tmp_path: Path):
    for folder in ("train", "val"):
        (tmp_path / folder).mkdir()
    data = with_files_checked(DataConfig(kind="imagefolder", root=str(tmp_path), classes_file=str(STUDY_LIST)))
    assert data.n_classes == 50 and len(data.categories) == 50
    assert data.categories[:3] == ("airplane", "bear", "bear")
    categories = cbm.Categories.of_classes(data.class_categories())
    assert len(categories.names) == 16 and categories.chance == 1 / 16
    assert categories.decision_rule == "mean probability over 16 categories (50 classes)"


# --- the class list's category field ----------------------------------------------------------------------------


def _list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text(text)
    return path


def test_a_category_follows_a_bar_and_a_class_without_one_is_its_own(tmp_path: Path):
    entries = read_class_list(_list(tmp_path, "# list\nn01  brown  bear |  bear  # a comment\nn02 | bear\nn03 tench\n"
                                              "n04\tpolar bear\t|\tbig   bear\n"))
    assert [(e.folder, e.name, e.category) for e in entries] == [
        ("n01", "brown  bear", "bear"), ("n02", "n02", "bear"), ("n03", "tench", None),
        ("n04", "polar bear", "big bear")]
    assert class_categories(entries) == ("bear", "bear", "n03", "big bear")


@pytest.mark.parametrize("line, words", [
    ("n02 second |", "nothing after '|'"),
    ("n02 second | a | b", "another '|' after '|'"),
    ("| bear", "no class folder before '|'"),
])
def test_a_bad_category_field_names_the_line(tmp_path: Path, line, words):
    path = _list(tmp_path, f"n01 first | bear\n{line}\n")
    with pytest.raises(ImageFolderError) as info:
        read_class_list(path)
    assert f"{path}:2: " in str(info.value) and words in str(info.value)


def test_a_class_that_is_its_own_category_may_not_share_a_listed_categorys_name(tmp_path: Path):
    path = _list(tmp_path, "n01 first | n02\nn02 second\n")
    with pytest.raises(ImageFolderError, match=r":2: class 'n02' has no category, so it is its own category 'n02', "
                                               r"but that is also the category of class 'n01' \(line 1\)"):
        read_class_list(path)


# --- the data config --------------------------------------------------------------------------------------------


def _tree(tmp_path: Path, class_list: str) -> dict:
    for folder in ("train", "val"):
        (tmp_path / folder).mkdir(exist_ok=True)
    return {"kind": "imagefolder", "root": str(tmp_path), "classes_file": str(_list(tmp_path, class_list))}


def test_synthetic_classes_are_their_own_categories_and_keep_their_dumps():
    data = with_files_checked(DataConfig(n_classes=4))
    assert data.categories is None and data.class_categories() == CLASS_NAMES[:4]
    # Unset, the key is not dumped: point ids, data caches and checkpoints of synthetic runs stay as they were.
    assert "categories" not in data.model_dump() and "categories" not in data.model_dump_json()
    assert cbm.Categories.of_classes(data.class_categories()).decision_rule == \
        "argmax over 4 classes (each its own category)"
    with pytest.raises(ValidationError, match="is only read by kind imagefolder") as info:
        DataConfig(n_classes=2, categories=("disk", "square"))
    assert info.value.errors()[0]["loc"] == ("categories",)


def test_an_imagefolder_config_takes_its_categories_from_the_class_list(tmp_path: Path):
    values = _tree(tmp_path, "n01 a | x\nn02 b | y\nn03 c | x\nn04 d\n")
    data = with_files_checked(DataConfig.model_validate(values))
    assert (data.n_classes, data.categories) == (4, ("x", "y", "x", "n04"))
    assert with_files_checked(DataConfig.model_validate({**values, "categories": ["x", "y", "x", "n04"]})) == data
    assert DataConfig.model_validate(data.model_dump()) == data
    categories = cbm.Categories.of_classes(data.categories)
    assert categories.names == ("x", "y", "n04") and categories.of_class.tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("extra, words", [
    ({"n_classes": 3, "categories": ["x", "y"]}, "names 2 categories, one per class, but n_classes is 3"),
    ({"categories": ["x", "x"]}, "puts every class in the category 'x'; CBM decides among at least 2"),
    ({"categories": ["x", ""]}, "at least 1 character"),
    ({"categories": ["x", "y\nz"]}, "control character"),
])
def test_categories_that_cannot_be_are_refused_without_reading_a_file(tmp_path: Path, extra, words):
    values = {"kind": "imagefolder", "root": str(tmp_path / "absent"), "classes_file": str(tmp_path / "absent.txt")}
    with pytest.raises(ValidationError, match=words) as info:
        DataConfig.model_validate(values | extra)
    assert info.value.errors()[0]["loc"][0] == "categories"


@pytest.mark.parametrize("class_list, given, key, words", [
    ("n01 a | x\nn02 b | x\n", None, "classes_file", "puts every class in the category 'x'"),
    ("n01 a | x\nn02 b | y\n", ["y", "x"], "categories", "is ['y', 'x'], but classes_file"),
])
def test_categories_the_class_list_contradicts_are_refused(tmp_path: Path, class_list, given, key, words):
    values = _tree(tmp_path, class_list) | ({"categories": given} if given else {})
    with pytest.raises(DataFileError, match=re.escape(words)) as info:
        with_files_checked(DataConfig.model_validate(values))
    assert info.value.key == key


def test_an_imagefolder_sweep_records_its_categories_in_every_points_config(tmp_path: Path, write_sweep):
    from sfhpc.job import PointConfig
    from sfhpc.sweep import expand_file

    values = _tree(tmp_path, "n01 a | x\nn02 b | y\n")
    plan = expand_file(write_sweep(f"name: s\nexecutor: local\ndata: {json.dumps(values)}\ngrid:\n  seed: [0]\n"
                                   "stages:\n  train:\n    params: {width: 4, epochs: 1}\n"))
    assert plan.sweep.data.categories == ("x", "y")
    point = PointConfig(stage="train", point_id="p", params={}, data=plan.sweep.data,
                        job={"entry": "sfhpc.stages.train"})
    assert point.model_dump(mode="json")["data"]["categories"] == ["x", "y"]  # as config.yaml and result files get it


# --- the decision rule ------------------------------------------------------------------------------------------


def _study_categories() -> cbm.Categories:
    return cbm.Categories.of_classes(class_categories(read_class_list(STUDY_LIST)))


def _probabilities(folders: list[str], peaks: dict[str, float]) -> np.ndarray:
    """Class probabilities over the study's 50 classes: `peaks` by folder, the rest spread evenly over the others."""
    row = np.full(len(folders), (1 - sum(peaks.values())) / (len(folders) - len(peaks)))
    for folder, value in peaks.items():
        row[folders.index(folder)] = value
    return row


def test_the_decision_is_the_category_of_highest_mean_probability_not_the_argmax_class():
    folders = [e.folder for e in read_class_list(STUDY_LIST)]
    categories = _study_categories()
    cats = ["n02123045", "n02123159", "n02123394", "n02123597", "n02124075"]
    keyboards, dogs = ["n03085013", "n04505470"], ["n02085782", "n02085936", "n02086079", "n02088364", "n02113799"]
    bicycles = ["n02835271", "n03792782"]
    probabilities = np.stack([
        # The most probable class is a cat (tabby, 0.30), but cat's mean is 0.06 and keyboard's 0.25.
        _probabilities(folders, {cats[0]: 0.30, keyboards[0]: 0.25, keyboards[1]: 0.25}),
        # Dog has the largest total (0.60) but a mean of 0.12; bicycle's mean is 0.17.
        _probabilities(folders, {**dict.fromkeys(dogs, 0.12), bicycles[0]: 0.17, bicycles[1]: 0.17}),
    ])
    by_class = [categories.names[categories.of_class[c]] for c in probabilities.argmax(axis=1)]
    assert by_class == ["cat", "bicycle"]
    decided = [categories.names[c] for c in categories.decide(probabilities)]
    assert decided == ["keyboard", "bicycle"]
    # What a sum over each category's classes would pick instead for the second image: dog.
    assert categories.names[int(np.argmax(np.bincount(categories.of_class, probabilities[1])))] == "dog"

    def fake_model(batch: np.ndarray) -> np.ndarray:  # image i of the batch gets row i % 2
        return probabilities[np.arange(len(batch)) % 2]

    predict = cbm.category_predictor(fake_model, categories)
    images = np.full((4, 16, 16), cbm.MEAN_LUMINANCE, dtype=np.float32)
    keyboard, bicycle = categories.names.index("keyboard"), categories.names.index("bicycle")
    assert predict(np.zeros((4, 3, 16, 16), np.float32)).tolist() == [keyboard, bicycle] * 2
    labels = np.array([keyboard, bicycle] * 2)
    np.testing.assert_array_equal(cbm.accuracy_grid(predict, images, labels, image_size=16), 1.0)
    by_argmax = cbm.accuracy_grid(lambda batch: categories.labels(fake_model(batch).argmax(axis=1)), images, labels,
                                  image_size=16)
    np.testing.assert_array_equal(by_argmax, 0.5)  # the argmax class's category gets the first image wrong


def test_probabilities_that_do_not_match_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"need class probabilities \(B, 50\) for 50 classes in 16 categories"):
        _study_categories().decide(np.full((2, 8), 1 / 8))


def test_with_every_class_its_own_category_the_decision_is_the_argmax_over_classes():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4))
    with torch.no_grad():  # scores of the pooled pixels' deviations from mid-grey: every class gets chosen
        model[2].bias.copy_(-0.5 * model[2].weight.sum(dim=1))
    rng = np.random.default_rng(0)
    blocks = rng.random((64, 3, 4, 4)).astype(np.float32)  # 8 x 8 px blocks: what the pooling sees varies
    batch = np.repeat(np.repeat(blocks, 8, axis=2), 8, axis=3)
    own = cbm.Categories.of_classes(with_files_checked(DataConfig(n_classes=4)).class_categories())
    with torch.no_grad():
        argmax = model(torch.from_numpy(batch)).argmax(dim=1).numpy()
    assert set(argmax.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(cbm.torch_predictor(model, own)(batch), argmax)
    np.testing.assert_array_equal(cbm.torch_predictor(model)(batch), argmax)
    labels = rng.integers(0, 4, size=16)
    images = cbm.to_cbm_images((batch[:16] * 255).astype(np.uint8))
    np.testing.assert_array_equal(
        cbm.accuracy_grid(cbm.torch_predictor(model, own), images, own.labels(labels), image_size=32),
        cbm.accuracy_grid(cbm.torch_predictor(model), images, labels, image_size=32))


def test_categories_do_not_change_the_readable_names_or_the_image_cache(tmp_path: Path):
    from sfhpc.data.imagefolder import ImageFolderSpec, cache_key

    plain = read_class_list(_list(tmp_path, "n01 brown bear\nn02 tench\n"))
    spec = ImageFolderSpec(tmp_path, tmp_path / "classes.txt")
    categorised = read_class_list(_list(tmp_path, "n01 brown bear | bear\nn02 tench | fish\n"))
    assert [e.name for e in categorised] == [e.name for e in plain] == ["brown bear", "tench"]
    assert cache_key(spec, categorised) == cache_key(spec, plain)  # the same images: the cache is reused
