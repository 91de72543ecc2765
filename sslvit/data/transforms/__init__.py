"""Image -> tensor(s) transforms: multi-crop views for pretraining, a deterministic one for evaluation."""

from sslvit.data.transforms.blur import GaussianBlur
from sslvit.data.transforms.eval import EvalTransform
from sslvit.data.transforms.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCropTransform, blur_kernel_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "GaussianBlur",
    "MultiCropTransform",
    "blur_kernel_size",
]
