"""Image classifiers: optional fixed spectral front-end, normalisation, a ResNet trunk and a linear head.

Inputs are pixels in [0, 1]; the model returns logits, never probabilities (attack evaluation depends on
it). The spectral filter sits before normalisation so that it acts on the images themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from sfhpc.models.bands import BandParams
from sfhpc.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from sfhpc.models.spectral import build_filter

ARCHS = ("resnet18", "small_resnet")
IMAGENET_HEAD = "fc."  # torchvision's 1000-class head in its ResNet state dicts: the model's own head replaces it
SHOWN_KEYS = 5  # keys named per kind of mismatch in an error (then the count)


class Classifier(nn.Module):
    """pixels in [0,1] -> (optional spectral filter) -> normalisation -> trunk -> pooled features -> logits.

    ``trunk`` maps normalised images to pooled features of size ``feature_dim``; ``mean`` and ``std``
    are per-channel and stored as buffers (fixed, saved with the model, moved with ``.to``). With ``neural_dim``,
    a second linear head on the same pooled features predicts a neural predictor's outputs (co-training,
    SCIENCE.md section 2); ``forward`` still returns logits alone unless asked for both.
    """

    mean: torch.Tensor  # (1, 3, 1, 1), a buffer
    std: torch.Tensor

    def __init__(
        self,
        trunk: nn.Module,
        feature_dim: int,
        n_classes: int,
        spectral: nn.Module | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        neural_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.spectral = spectral
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, n_classes)
        self.neural_head = nn.Linear(feature_dim, neural_dim) if neural_dim else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, feature_dim) of pixels ``x`` (B, 3, H, W) in [0, 1]."""
        if self.spectral is not None:
            x = self.spectral(x)
        return self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, with_neural: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n_classes) of pixels ``x`` (B, 3, H, W) in [0, 1]; with ``with_neural``, (logits, neural
        head outputs). One call computes both, so that DDP sees every parameter used in one forward pass."""
        features = self.features(x)
        if not with_neural:
            return self.head(features)
        if self.neural_head is None:
            raise ValueError("this model has no neural head (it was built without neural_dim)")
        return self.head(features), self.neural_head(features)


def _stage(inplanes: int, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride=stride, downsample=downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(n_blocks - 1)]
    return nn.Sequential(*layers)


def small_resnet_trunk(width: int = 16, blocks: Sequence[int] = (1, 1, 1, 1)) -> tuple[nn.Module, int]:
    """A narrow ResNet for small images, from torchvision's BasicBlock; returns (trunk, 8 * width).

    Stem: 3x3 conv stride 2 + BN + ReLU (no max-pool: at 64-128 px the extra 2x downsampling would
    discard the fine scales the human band lives in). Four stages of widths width * (1, 2, 4, 8), strides
    (1, 2, 2, 2), then global average pooling and flatten.
    """
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be four positive stage depths, got {tuple(blocks)}")
    widths = [width * m for m in (1, 2, 4, 8)]
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    inplanes = width
    for planes, n_blocks, stride in zip(widths, blocks, (1, 2, 2, 2), strict=True):
        layers.append(_stage(inplanes, planes, n_blocks, stride))
        inplanes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    trunk = nn.Sequential(*layers)
    _init_like_torchvision(trunk)
    return trunk, widths[-1]


def _init_like_torchvision(module: nn.Module) -> None:
    # The same initialisation torchvision's ResNet uses, so both trunks start alike.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18_trunk() -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 (random weights) with the classifier replaced by Identity; (trunk, 512)."""
    trunk = torchvision.models.resnet18(weights=None)
    feature_dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, feature_dim


def build_classifier(
    arch: str,
    n_classes: int,
    band: str,
    image_size: int,
    band_params: BandParams = BandParams(),
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
    neural_dim: int | None = None,
) -> Classifier:
    """A :class:`Classifier` for ``image_size`` px images with the ``band`` front-end.

    Normalisation uses ImageNet's std and ImageNet's mean times the front-end's DC gain. ``arch`` is
    'resnet18' or 'small_resnet' (``width`` and ``blocks`` apply to the latter only); ``neural_dim`` adds a neural
    head of that many outputs. Raises ValueError
    for an unknown arch or band, or a band above the images' Nyquist frequency.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    spectral = build_filter(band, image_size, band_params)
    trunk, feature_dim = resnet18_trunk() if arch == "resnet18" else small_resnet_trunk(width, blocks)
    # Normalisation follows the filter, so it subtracts the mean the filter leaves: a band-pass passes
    # no DC, and subtracting the raw ImageNet mean would add a large constant offset. That offset makes
    # the first BatchNorm's running mean lag the fast-moving early weights, and the eval-mode model
    # collapses onto one class (seen: val accuracy at chance with a training loss of 0.5).
    dc_gain = 1.0 if spectral is None else spectral.dc_gain
    mean = tuple(m * dc_gain for m in IMAGENET_MEAN)
    return Classifier(trunk, feature_dim, n_classes, spectral, mean, IMAGENET_STD, neural_dim)


# ------------------------------------------------------------------------------------ pretrained weights
class PretrainedWeightsError(ValueError):
    """A pretrained weights file that is missing, is not a state dict, or does not fit the trunk."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict (parameter and buffer names -> tensors) saved in `path` with torch.save, read with
    weights_only (a file runs no code when it is read)."""
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedWeightsError(f"pretrained weights {path}: not a file torch.load reads ({reason})") from None
    if not isinstance(state, Mapping):
        raise _not_a_state_dict(path, f"a {type(state).__name__}")
    not_tensors = [str(key) for key, value in state.items()
                   if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise _not_a_state_dict(path, f"{len(not_tensors)} entries that are not tensors ({_some(not_tensors)}): a "
                                      "training checkpoint? Save its model's state_dict() alone")
    return dict(state)


def _not_a_state_dict(path: Path, holds: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(f"pretrained weights {path}: not a state dict (names -> tensors, as "
                                  f"model.state_dict() gives); it holds {holds}")


def load_pretrained_trunk(model: Classifier, path: Path) -> None:
    """Load the torchvision ResNet-18 state dict saved in `path` into the model's resnet18 trunk (the same key
    names: conv1.weight, bn1.*, layer1.0.conv1.weight, ...). Its ImageNet head (fc.*) is dropped: the model's own
    head, of its own classes, stays as built. A missing file, a file that is not a state dict, and missing,
    unexpected or wrongly shaped tensors are a PretrainedWeightsError naming them. The model's normalisation
    (ImageNet's mean and std, after the spectral front-end) is the one such weights were trained with."""
    if not isinstance(model.trunk, torchvision.models.ResNet):
        raise PretrainedWeightsError(f"pretrained weights {path} are a torchvision ResNet-18's; the model's trunk is "
                                     f"a {type(model.trunk).__name__} (arch must be resnet18)")
    state = read_state_dict(path)
    trunk_state = {key: value for key, value in state.items() if not key.startswith(IMAGENET_HEAD)}
    problems = _state_mismatches(model.trunk.state_dict(), trunk_state)
    if problems:
        raise PretrainedWeightsError(f"pretrained weights {path} do not fit torchvision's ResNet-18 trunk: "
                                     + "; ".join(problems))
    model.trunk.load_state_dict(trunk_state)


def _state_mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped entries of `given`, a few named of each, with their counts. A missing
    BatchNorm counter (num_batches_tracked) is not one: torchvision's published files predate it, and BatchNorm
    fills it in when loading."""
    missing = [key for key in expected if key not in given and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in given if key not in expected]
    shapes = [f"{key} {tuple(given[key].shape)} in the file, {tuple(value.shape)} in the model"
              for key, value in expected.items() if key in given and given[key].shape != value.shape]
    kinds = (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
    return [f"{len(keys)} {kind}: {_some(keys)}" for kind, keys in kinds if keys]


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return f"{shown}, ... ({len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else shown
