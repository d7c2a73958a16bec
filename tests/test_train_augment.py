"""The training crops (sfhpc.data.augment): torchvision's RandomResizedCrop drawn from a seeded generator, the padded
crop the synthetic data keeps, the flip; which crop a point trains with, and what its result records."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sfhpc.config import DataConfig
from sfhpc.data.augment import cbm_grey, pad_crop_flip, random_resized_boxes, random_resized_crop_flip
from sfhpc.evaluation.cbm import LUMINANCE_WEIGHTS, MEAN_LUMINANCE, to_cbm_images
from sfhpc.job import run_point
from sfhpc.stages.train import RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, TrainParams, resolve_crop

from conftest import located_error, point_config


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def box_bounds(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Each box's area share and aspect ratio, at their widest and narrowest within half a pixel of rounding:
    torchvision rounds a box's exact sides to whole pixels."""
    h, w = boxes[:, 2].double(), boxes[:, 3].double()
    area = height * width
    return (((h + 0.5) * (w + 0.5)) / area, ((h - 0.5) * (w - 0.5)) / area, (w + 0.5) / (h - 0.5),
            (w - 0.5) / (h + 0.5))


@pytest.mark.parametrize(("scale", "ratio"), [(RESIZED_CROP_SCALE, RESIZED_CROP_RATIO), ((0.3, 0.5), (1.0, 2.0))])
def test_resized_crop_boxes_have_area_shares_and_aspect_ratios_within_the_ranges(scale, ratio):
    height = width = 224
    boxes = random_resized_boxes(5000, height, width, scale, ratio, generator())
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    share_high, share_low, ratio_high, ratio_low = box_bounds(boxes, height, width)
    assert (share_high >= scale[0]).all() and (share_low <= scale[1]).all()
    assert (ratio_high >= ratio[0]).all() and (ratio_low <= ratio[1]).all()
    # The draws span their ranges (not, say, always the whole image) ...
    share = (h * w).double() / (height * width)
    assert share.min() < scale[0] + 0.02 and share.max() > scale[1] - 0.05


@pytest.mark.parametrize(("scale", "ratio"), [(RESIZED_CROP_SCALE, RESIZED_CROP_RATIO), ((0.3, 0.5), (1.0, 2.0))])
def test_resized_crop_boxes_follow_torchvisions_distribution(scale, ratio):
    # ... as torchvision's own RandomResizedCrop draws them (tries that do not fit are redrawn, which favours small
    # and square boxes: not simply uniform shares).
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(1, 224, 224)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)])
    ours = random_resized_boxes(4000, 224, 224, scale, ratio, generator())
    for measure in (lambda b: b[:, 2] * b[:, 3], lambda b: b[:, 3] / b[:, 2], lambda b: b[:, 0], lambda b: b[:, 1]):
        assert ks_2samp(measure(ours).double().numpy(), measure(theirs).double().numpy()).statistic < 0.05


def test_resized_crop_positions_cover_the_image():
    boxes = random_resized_boxes(4000, 64, 64, (0.1, 0.1), (1.0, 1.0), generator())
    top, left = boxes[:, 0], boxes[:, 1]
    assert top.min() == 0 and left.min() == 0 and top.max() == 64 - 20 and left.max() == 64 - 20  # sides of 20 px


def test_a_box_that_can_never_fit_falls_back_to_torchvisions_centre_crop():
    # A width / height of 4 at nearly the whole area cannot fit a square image: the centre crop narrowed to ratio 4
    # is the whole width and a quarter of the height.
    boxes = random_resized_boxes(3, 64, 64, (0.9, 1.0), (4.0, 4.0), generator())
    assert boxes.tolist() == [[24, 0, 16, 64]] * 3


def test_resized_crop_keeps_each_image_size():
    batch = torch.rand(6, 3, 40, 24, generator=generator(1))
    out = random_resized_crop_flip(batch.clone(), generator(), RESIZED_CROP_SCALE, RESIZED_CROP_RATIO)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1  # bilinear resizing stays within the pixels' range


def test_resized_crop_is_the_box_resized_as_torchvision_does():
    from torchvision.transforms.v2 import functional as TF

    batch = torch.rand(8, 3, 32, 32, generator=generator(2))
    out = random_resized_crop_flip(batch.clone(), generator(5), RESIZED_CROP_SCALE, RESIZED_CROP_RATIO)
    boxes = random_resized_boxes(8, 32, 32, RESIZED_CROP_SCALE, RESIZED_CROP_RATIO, generator(5))
    for image, result, (top, left, h, w) in zip(batch, out, boxes.tolist(), strict=True):
        expected = TF.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        assert torch.allclose(result, expected, atol=1e-6) or torch.allclose(result, expected.flip(-1), atol=1e-6)


def test_crops_are_reproducible_from_the_seed():
    batch = torch.rand(16, 3, 32, 32, generator=generator(3))
    for crop in (lambda g: random_resized_crop_flip(batch.clone(), g, RESIZED_CROP_SCALE, RESIZED_CROP_RATIO),
                 lambda g: pad_crop_flip(batch.clone(), g)):
        assert torch.equal(crop(generator(7)), crop(generator(7)))
        assert not torch.equal(crop(generator(7)), crop(generator(8)))


def test_flip_mirrors_about_half_the_images():
    # A box of the whole image (scale 1, ratio 1) leaves each image as it is: each output is its image or its mirror.
    batch = torch.rand(400, 3, 8, 8, generator=generator(4))
    out = random_resized_crop_flip(batch.clone(), generator(), (1.0, 1.0), (1.0, 1.0))
    same = torch.tensor([torch.equal(o, b) for o, b in zip(out, batch, strict=True)])
    mirrored = torch.tensor([torch.equal(o, b.flip(-1)) for o, b in zip(out, batch, strict=True)])
    assert (same ^ mirrored).all()
    assert 150 < mirrored.sum() < 250


def test_pad_crop_is_a_shifted_window_of_the_reflect_padded_image_or_its_mirror():
    batch = torch.rand(200, 3, 16, 16, generator=generator(6))
    out = pad_crop_flip(batch.clone(), generator())
    padded = F.pad(batch, (1, 1, 1, 1), mode="reflect")  # 1/16 of 16 px
    windows = [[padded[:, :, y:y + 16, x:x + 16] for x in range(3)] for y in range(3)]
    mirrored = 0
    for i, image in enumerate(out):
        plain = any(torch.equal(image, w[i]) for row in windows for w in row)
        flipped = any(torch.equal(image, w[i].flip(-1)) for row in windows for w in row)
        assert plain != flipped, i
        mirrored += flipped
    assert 60 < mirrored < 140


# ------------------------------------------------------------------------------- the crop a point uses
@pytest.mark.parametrize(("params", "kind", "crop"), [
    ({}, "imagefolder", "random_resized"),  # the study's recipe
    ({}, "synthetic", "pad"),  # what the quickstart always trained with
    ({"augment_crop": "random_resized"}, "synthetic", "random_resized"),
    ({"augment_crop": "pad"}, "imagefolder", "pad"),
    ({"augment": False}, "imagefolder", "none"),
])
def test_auto_crop_is_random_resized_for_folders_and_pad_for_synthetic_data(params, kind, crop):
    assert resolve_crop(TrainParams(**params), kind) == crop


SWEEP = """\
name: crops
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 32, n_test: 32}
grid:
  seed: [0]
stages:
  train:
    params: {PARAMS}
"""


@pytest.mark.parametrize(("params", "key", "words"), [
    ("{augment_crop: random_resized, augment_scale: [0.0, 1.0]}", "augment_scale", ["0 < low <= high <= 1"]),
    ("{augment_crop: random_resized, augment_scale: [0.9, 0.2]}", "augment_scale", ["0 < low <= high <= 1"]),
    ("{augment_crop: random_resized, augment_scale: [0.1, 1.5]}", "augment_scale", ["0 < low <= high <= 1"]),
    ("{augment_crop: random_resized, augment_ratio: [2, 0.5]}", "augment_ratio", ["0 < low <= high"]),
    ("{augment_crop: random_resized, augment_ratio: [0.5]}", "augment_ratio[1]", ["missing"]),
    ("{augment_crop: resized}", "augment_crop", ["random_resized"]),
    # scale and ratio without the crop that reads them: auto is pad for synthetic data
    ("{augment_scale: [0.5, 1.0]}", "augment_scale", ["only read by augment_crop random_resized", "pad",
                                                      "data kind synthetic"]),
    ("{augment: false, augment_crop: random_resized, augment_ratio: [1, 1]}", "augment_ratio", ["augment is off"]),
])
def test_bad_crop_settings_name_the_key(write_sweep, params, key, words):
    located_error(write_sweep, SWEEP.replace("{PARAMS}", params), 8, f"stages.train.params.{key}", words)


# ----------------------------------------------------------------------------------------- results
DATA = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "n_train": 32, "n_val": 16, "n_test": 16, "seed": 0}
PARAMS = {"width": 4, "batch_size": 16, "lr": 0.05, "epochs": 1, "seed": 1}


def recorded_crop(result: Path) -> str:
    with h5py.File(result) as f:
        return f.attrs["augment_crop"]


def test_results_record_the_crop_auto_resolved_to(tmp_path: Path):
    assert recorded_crop(run_point(point_config("train", PARAMS, DATA), tmp_path / "auto")) == "pad"
    explicit = {**PARAMS, "augment_crop": "random_resized", "augment_scale": [0.5, 1.0]}
    assert recorded_crop(run_point(point_config("train", explicit, DATA), tmp_path / "rrc")) == "random_resized"
    off = {**PARAMS, "augment": False}
    assert recorded_crop(run_point(point_config("train", off, DATA), tmp_path / "off")) == "none"


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for name in ("n01", "n02"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{name}_{i}.JPEG")
    (root / "classes.txt").write_text("n01\nn02\n")


def test_a_folder_dataset_trains_with_random_resized_crops_by_default(awkward_dir: Path):
    root = awkward_dir / "imagenet"
    _image_folder(root)
    data = DataConfig(kind="imagefolder", root=str(root), classes_file=str(root / "classes.txt"), image_size=32,
                      n_classes=2).model_dump(mode="json")
    params = {**PARAMS, "batch_size": 8}
    assert recorded_crop(run_point(point_config("train", params, data), awkward_dir / "point")) == "random_resized"


def test_grey_augmentation_makes_some_images_the_cbm_stimulus_kind_and_leaves_the_others():
    batch = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    out = cbm_grey(batch, 0.5, torch.Generator().manual_seed(1), MEAN_LUMINANCE, LUMINANCE_WEIGHTS)
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 70 < int(grey.sum()) < 130  # about half, drawn per image
    assert torch.equal(out[~grey], batch[~grey])
    # a grey image is the CBM stimulus at full contrast: luminance deviations around the mean luminance 0.449
    stimulus = to_cbm_images(batch[grey].numpy())  # contrast 0.2 of the same deviations
    deviations = out[grey, 0].numpy() - MEAN_LUMINANCE
    np.testing.assert_allclose(0.2 * deviations + MEAN_LUMINANCE, stimulus, atol=1e-5)
    again = cbm_grey(batch, 0.5, torch.Generator().manual_seed(1), MEAN_LUMINANCE, LUMINANCE_WEIGHTS)
    assert torch.equal(out, again)  # reproducible from the generator
    assert torch.equal(cbm_grey(batch, 0.0, torch.Generator(), MEAN_LUMINANCE, LUMINANCE_WEIGHTS), batch)
