"""Fixed (non-trainable) spectral-steering front-ends: one 2-D kernel applied per RGB channel.

The kernels are built to match the frequency responses in :mod:`sfhpc.models.bands`, which are defined
in cycles per image, so a band keeps its meaning at any image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from sfhpc.models import bands
from sfhpc.models.bands import BandParams

# Kernel size of the frequency-sampled filters at the reference size (SCIENCE.md section 3).
REFERENCE_KERNEL_SIZE = 31
MIN_KERNEL_SIZE = 7


class SpectralFilter(nn.Module):
    """Each RGB channel cross-correlated with one fixed 2-D kernel, circular padding (a depthwise convolution).

    The kernel is a buffer, not a parameter: it is never trained, moves with ``.to(device)`` and is saved
    in the ``state_dict``. The response is defined in c/img for ``image_size``, so other sizes are refused.
    The filtering itself is done in the frequency domain: with circular padding the convolution is exactly a
    product of DFTs, and an FFT is about ten times faster on a CPU than a 17x17 depthwise convolution at 128 px
    (forward and backward; attacks differentiate through the filter).
    """

    kernel: torch.Tensor  # (3, 1, k, k), a buffer

    def __init__(self, kernel: torch.Tensor, image_size: int, band: str) -> None:
        super().__init__()
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(f"kernel must be square with odd size, got shape {tuple(kernel.shape)}")
        self.image_size = image_size
        self.band = band
        self.register_buffer("kernel", kernel.detach().to(torch.float32).expand(3, 1, *kernel.shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a (B, 3, H, W) batch; H and W must equal the image size the filter was built for."""
        if x.shape[-3:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"{self.band!r} filter was built for 3 x {self.image_size} x {self.image_size} images, "
                f"got {tuple(x.shape[-3:])}"
            )
        spectrum = torch.fft.rfft2(x.contiguous()) * self.transfer_function().to(x.device)
        return torch.fft.irfft2(spectrum, s=(self.image_size, self.image_size)).to(x.dtype)

    def transfer_function(self) -> torch.Tensor:
        """The rfft2-domain (H, W // 2 + 1) gain of circular cross-correlation with the kernel: the conjugate DFT
        of the kernel placed on the image grid with its centre at the origin."""
        size, half = self.kernel.shape[-1], self.kernel.shape[-1] // 2
        placed = torch.zeros(self.image_size, self.image_size, dtype=torch.float32, device=self.kernel.device)
        placed[:size, :size] = self.kernel[0, 0]
        placed = torch.roll(placed, shifts=(-half, -half), dims=(0, 1))
        return torch.conj(torch.fft.rfft2(placed))

    @property
    def dc_gain(self) -> float:
        """Response at 0 c/img (the kernel sum): what the filter does to an image's mean."""
        return float(self.kernel[0].sum())

    def extra_repr(self) -> str:
        return f"band={self.band!r}, image_size={self.image_size}, kernel_size={self.kernel.shape[-1]}"


def lsf_kernel(image_size: int, params: BandParams = BandParams()) -> torch.Tensor:
    """Normalised spatial Gaussian whose c/img response is the same at every image size.

    sigma_px = lsf_sigma_px224 * image_size / 224; half-width ceil(2.5 sigma_px), at least 1.
    """
    sigma_px = params.lsf_sigma_px224 * image_size / bands.REFERENCE_SIZE_PX
    half = max(1, math.ceil(2.5 * sigma_px))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    profile = np.exp(-(offsets**2) / (2 * sigma_px**2))
    kernel = np.outer(profile, profile)
    return torch.from_numpy(kernel / kernel.sum()).to(torch.float32)


def kernel_size_for(image_size: int) -> int:
    """Odd kernel size nearest 31 * image_size / 224 (at least 7): the same extent in image units."""
    target = REFERENCE_KERNEL_SIZE * image_size / bands.REFERENCE_SIZE_PX
    return max(MIN_KERNEL_SIZE, 2 * round((target - 1) / 2) + 1)


def frequency_sampled_kernel(gain_fn: Callable[[np.ndarray], np.ndarray], image_size: int, size: int) -> torch.Tensor:
    """Spatial kernel (size x size, odd) whose response approximates the radial gain ``gain_fn(f_cpi)``.

    Samples the gain on the image_size x image_size DFT grid, takes the real inverse FFT (the gain is
    radially symmetric, so the kernel is real and even), centres it and crops the middle. No window is
    applied: the cropped kernels already match the gains to well within 0.05 (see tests/test_spectral.py).
    """
    if size % 2 == 0 or size > image_size:
        raise ValueError(f"kernel size must be odd and <= image_size ({image_size}), got {size}")
    freqs = np.fft.fftfreq(image_size, 1 / image_size)
    f_cpi = np.hypot(freqs[None, :], freqs[:, None])
    impulse = np.fft.fftshift(np.real(np.fft.ifft2(gain_fn(f_cpi))))
    centre, half = image_size // 2, size // 2
    cropped = impulse[centre - half : centre + half + 1, centre - half : centre + half + 1]
    return torch.from_numpy(np.ascontiguousarray(cropped)).to(torch.float32)


def build_filter(band: str, image_size: int, params: BandParams = BandParams()) -> SpectralFilter | None:
    """The fixed front-end for ``band`` at ``image_size`` px, or None for 'none'.

    Raises ValueError for an unknown band or one that needs frequencies above Nyquist.
    """
    bands.check_band_fits(band, image_size, params)  # also rejects unknown bands
    if band == "none":
        return None
    if band == "lsf":
        kernel = lsf_kernel(image_size, params)
    else:
        kernel = frequency_sampled_kernel(
            lambda f: bands.band_gain(band, f, params), image_size, kernel_size_for(image_size)
        )
    return SpectralFilter(kernel, image_size, band)
