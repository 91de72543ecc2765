"""Image -> tensor(s) transforms: multi-crop or single-crop views for pretraining, a deterministic one for
evaluation."""

from sslvit.data.transforms.blur import GaussianBlur, blur_kernel_size
from sslvit.data.transforms.eval import EvalTransform
from sslvit.data.transforms.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCropTransform
from sslvit.data.transforms.single_view import BEiTTransform, SingleCropTransform
from sslvit.data.transforms.train_transform import DEVICE_STAGES, DeviceStage, TrainTransform

__all__ = [
    "DEVICE_STAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BEiTTransform",
    "DeviceStage",
    "EvalTransform",
    "GaussianBlur",
    "MultiCropTransform",
    "SingleCropTransform",
    "TrainTransform",
    "blur_kernel_size",
]
