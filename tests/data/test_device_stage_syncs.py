"""The device stages of the loader (photometric ops, crops cut on the device) never make a GPU host wait.

They run in ``on_after_batch_transfer`` every step, so a host-to-device copy of a constant there (a
``new_tensor`` of the normalisation mean, say) would stall the queue every step. On fake CUDA tensors
``SyncWatch`` sees those copies without a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.fake import fake_batch, fake_copy
from benchmarks.sync_audit import SyncWatch
from sslvit.data.transforms import MultiCropTransform
from sslvit.data.transforms.device_crops import crop_sources

CUDA = torch.device("cuda")


def transform(**kwargs: str) -> MultiCropTransform:
    return MultiCropTransform(global_crop_size=32, local_crop_size=16, num_local_crops=2, **kwargs)


def test_photometric_stage_makes_no_host_copy() -> None:
    stage = transform(device_stage="photometric").device_ops
    assert stage is not None
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    crops = [fake_copy(mode, torch.zeros(4, 3, s, s, dtype=torch.uint8), CUDA) for s in (32, 32, 16, 16)]
    with mode, SyncWatch("cuda") as watch:
        global_crops, local_crops = stage(crops[:2], crops[2:])
    assert watch.seen == []
    assert [x.device.type for x in global_crops + local_crops] == ["cuda"] * 4


def test_cutting_crops_on_the_device_makes_no_host_copy() -> None:
    t = transform(device_stage="crops")
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    batch = t.collate([(t(Image.fromarray(pixels)), 0) for _ in range(4)])
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    on_gpu = fake_batch(batch, mode, CUDA)
    with mode, SyncWatch("cuda") as watch:
        crops = crop_sources(on_gpu)
    assert watch.seen == []
    assert crops.global_crops[0].shape == (4, 3, 32, 32) and crops.global_crops[0].device.type == "cuda"


def test_the_watch_sees_a_constant_copied_to_the_device() -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    x = fake_copy(mode, torch.zeros(2, 3), CUDA)
    with mode, SyncWatch("cuda") as watch:
        x.new_tensor([0.5, 0.5, 0.5]), x.cpu(), x.to("cpu", non_blocking=True)
    assert [s.split(" at ")[0] for s in watch.seen] == [
        "blocking copy cpu -> cuda",
        "blocking copy cuda -> cpu",
    ]
