"""Training-time augmentation of batches of pixels (B, C, H, W) in [0, 1]: a random crop of one of two kinds, then a
horizontal flip of half the images, drawn from a `torch.Generator` so that each rank's stream is reproducible from
the point's seed (torchvision's transforms draw from torch's global generator instead).

- `pad`: a window of the image's size from the image reflect-padded by 1/16 of its size. The translation
  augmentation the synthetic quickstart has always trained with; it keeps objects at their size.
- `random_resized`: torchvision's RandomResizedCrop (SCIENCE.md section 2, "RandomResizedCrop 224 + flip"): a box of
  a random share of the image's area (`scale`) and a log-uniform random aspect ratio (`ratio`), resized to the
  image's size by bilinear interpolation. It changes an object's size, and so its content in cycles per image.

Deviation from the study, by design: sfhpc stores each ImageNet image once, as the 224 px centre crop of the image
resized to 256 px (sfhpc.data.imagefolder), and crops from that stored image, not from the original photo as the
study's torchvision pipeline did. Two consequences, both largest for the smallest boxes:
- the box is a share of the stored crop, which covers (224/256)^2 x 375/500 = 57% of a typical 500 x 375 photo's
  area: at equal `scale`, objects appear about 1.3x larger than in the study's crops;
- a box of b stored pixels, resized to the image's 224 px, holds frequencies up to b/2 c/img only: at the smallest
  share (8%, b = 63 px) up to about 32 c/img, where the study's box (about 122 px of a 500 x 375 photo) held up to
  about 61 c/img. Boxes near the whole image (the share is uniform in `scale`) differ little.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ATTEMPTS = 10  # as torchvision: boxes drawn until one fits the image, then a centre crop


def pad_crop_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of 1/16 of the size) and horizontal flip, per image."""
    size = batch.shape[-1]
    pad = max(1, size // 16)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=generator)
    out = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets.tolist())])
    return flip_half(out, generator)


def random_resized_crop_flip(batch: torch.Tensor, generator: torch.Generator, scale: tuple[float, float],
                             ratio: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size of the batch's images, scale, ratio) and a horizontal flip, per image."""
    height, width = batch.shape[-2:]
    boxes = random_resized_boxes(len(batch), height, width, scale, ratio, generator)
    out = torch.cat([resize(batch[i:i + 1, :, top:top + h, left:left + w], height, width)
                     for i, (top, left, h, w) in enumerate(boxes.tolist())])
    return flip_half(out, generator)


def resize(crop: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Bilinear as torchvision's resized_crop on tensors, with its anti-aliasing (a no-op here: a box is never
    # larger than the image it is resized to).
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def random_resized_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, height, width) as torchvision's RandomResizedCrop.get_params draws them:
    up to ATTEMPTS tries of an area share uniform in `scale` and an aspect ratio (width / height) log-uniform in
    `ratio`, the first that fits the image kept, at a uniform position; the centre crop of the image clipped to
    `ratio` when none fits. All images' tries are drawn at once (the same distribution, one call each)."""
    area = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(*scale, generator=generator) * (height * width)
    log_ratio = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                        generator=generator)
    aspect = torch.exp(log_ratio)
    widths = torch.round(torch.sqrt(area * aspect)).long()
    heights = torch.round(torch.sqrt(area / aspect)).long()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    box_h = heights.gather(1, first).squeeze(1)
    box_w = widths.gather(1, first).squeeze(1)
    none_fit = ~fits.any(dim=1)
    centre_h, centre_w = _centre_box(height, width, ratio)
    box_h[none_fit], box_w[none_fit] = centre_h, centre_w
    position = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = (position[:, 0] * (height - box_h + 1)).long()  # uniform over 0 .. height - box height
    left = (position[:, 1] * (width - box_w + 1)).long()
    top[none_fit] = (height - centre_h) // 2
    left[none_fit] = (width - centre_w) // 2
    return torch.stack([top, left, box_h, box_w], dim=1)


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the whole image, narrowed to the nearest aspect ratio within `ratio`."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


def flip_half(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2, in place (the crops' own new tensor); returns it."""
    flips = torch.rand(len(batch), generator=generator) < 0.5
    batch[flips] = batch[flips].flip(-1)
    return batch


def cbm_grey(batch: torch.Tensor, probability: float, generator: torch.Generator, mean_luminance: float,
             luminance_weights: tuple[float, float, float]) -> torch.Tensor:
    """A share `probability` of the images (drawn per image) turned into the CBM stimulus's kind of image: grey (the
    luminance, in all three channels) around `mean_luminance`, its deviations kept. A classifier probed by critical
    band masking (grey images at mean 0.449) then has seen grey images at that mean; contrast is another step."""
    chosen = torch.rand(len(batch), generator=generator) < probability
    if not chosen.any():
        return batch
    weights = torch.tensor(luminance_weights, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    grey = (batch[chosen] * weights).sum(dim=1, keepdim=True)
    grey = mean_luminance + grey - grey.mean(dim=(2, 3), keepdim=True)
    batch = batch.clone()
    batch[chosen.to(batch.device)] = grey.expand(-1, 3, -1, -1).clamp(0, 1)
    return batch
