"""Per-image ops of the training and evaluation views that take a PIL image *or* a ``(C, H, W)`` tensor.

Pictures reach the transforms as 8-bit PIL images (grey or RGB) and run through torchvision's PIL ops,
as before. Array files (16-bit, float, any number of bands) reach them as float tensors in [0, 1];
torchvision's crop, flip, resize and normalise take those as they are (antialiased bicubic for
tensors), and the ops here cover the rest: colour jitter for any channel count, solarisation at the
same threshold in [0, 1], and the conversion to the output tensor.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from sslvit.data.transforms.device_photometric import adjust_brightness, adjust_contrast, solarize

ImageLike = Image.Image | Tensor


def to_unit_tensor(image: ImageLike) -> Tensor:
    """PIL image -> float ``(C, H, W)`` in [0, 1] (``ToTensor``); a tensor is already that."""
    return TF.to_tensor(image) if isinstance(image, Image.Image) else image.float()


class ToViewTensor:
    """The last step of a view: a PIL image to uint8 (``normalize`` None, normalised later on the device)
    or to normalised float; a float tensor stays float (normalised when ``normalize`` is given)."""

    def __init__(self, normalize: T.Normalize | None) -> None:
        self.normalize = normalize

    def __call__(self, image: ImageLike) -> Tensor:
        if self.normalize is None:
            return TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image.float()
        return self.normalize(to_unit_tensor(image))

    def __repr__(self) -> str:
        return f"ToViewTensor(normalize={self.normalize})"


class BandJitter:
    """Brightness and contrast jitter of a ``(C, H, W)`` tensor with any C, as ``ColorJitter`` draws them.

    Brightness multiplies every channel by a factor uniform in ``[max(0, 1 - b), 1 + b]``; contrast
    blends the image with its mean over channels and pixels by a factor drawn likewise; the two run in
    a random order. Values stay in [0, 1].
    """

    def __init__(self, brightness: float, contrast: float) -> None:
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor):
            raise TypeError(f"BandJitter takes (C, H, W) tensors, got {type(image).__name__}")
        x = image[None].float()
        for op in torch.randperm(2).tolist():
            strength, adjust = (
                (self.brightness, adjust_brightness) if op == 0 else (self.contrast, adjust_contrast)
            )
            if strength > 0:
                factor = torch.empty(1).uniform_(max(0.0, 1 - strength), 1 + strength)
                x = adjust(x, factor)
        return x[0]

    def __repr__(self) -> str:
        return f"BandJitter(brightness={self.brightness}, contrast={self.contrast})"


def colour_jitter(in_chans: int, strengths: tuple[float, float, float, float]) -> T.ColorJitter | BandJitter:
    """torchvision's ``ColorJitter`` for grey or RGB (PIL or tensor), :class:`BandJitter` otherwise
    (``strengths`` already reduced to brightness and contrast by
    :func:`~sslvit.data.channels.colour_ops`)."""
    if in_chans in (1, 3):
        return T.ColorJitter(*strengths)
    return BandJitter(strengths[0], strengths[1])


class Solarize:
    """With probability ``p``, invert the values at or above half the range: 128 of a uint8 PIL image
    (``RandomSolarize(128)``, which draws the same way), 128/255 of a tensor in [0, 1]."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def __call__(self, image: ImageLike) -> ImageLike:
        if torch.rand(1).item() >= self.p:
            return image
        if isinstance(image, Image.Image):
            return TF.solarize(image, 128)
        return solarize(image.float())

    def __repr__(self) -> str:
        return f"Solarize(p={self.p})"
