"""device_stage=normalize: uint8 crops from the workers, normalised after the transfer, same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from sslvit.data import FakeDataset, MultiCropTransform, SSLDataModule
from sslvit.data.transforms.device_normalize import DeviceNormalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (50, 40, 3), dtype=np.uint8))


def test_normalising_a_batch_equals_torchvision_per_image_bit_for_bit() -> None:
    crops = torch.randint(0, 256, (5, 1, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_image = T.Compose([T.ToTensor(), T.Normalize((0.3,), (0.7,))])
    expected = torch.stack([per_image(Image.fromarray(c[0].numpy())) for c in crops])
    assert torch.equal(DeviceNormalize((0.3,), (0.7,)).normalize(crops), expected)


def test_uint8_views_then_the_stage_equal_the_workers_floats() -> None:
    on_host = MultiCropTransform(32, 16, 3, mean=MEAN, std=STD, device_stage="none")
    on_device = MultiCropTransform(32, 16, 3, mean=MEAN, std=STD, device_stage="normalize")
    assert on_host.device_ops is None and isinstance(on_device.device_ops, DeviceNormalize)
    for seed in range(3):
        torch.manual_seed(seed)  # the views draw their random parameters from torch's generator
        host_global, host_local = on_host(photo(seed))
        torch.manual_seed(seed)
        raw_global, raw_local = on_device(photo(seed))
        assert {x.dtype for x in raw_global + raw_local} == {torch.uint8}
        batched = on_device.device_ops([x[None] for x in raw_global], [x[None] for x in raw_local])
        for got, want in zip(batched[0] + batched[1], host_global + host_local, strict=True):
            assert torch.equal(got[0], want)


def test_the_datamodule_normalises_after_the_transfer() -> None:
    def datamodule(normalize_on_device: bool) -> SSLDataModule:
        stage = "normalize" if normalize_on_device else "none"
        transform = MultiCropTransform(32, 16, 2, mean=MEAN, std=STD, device_stage=stage)
        return SSLDataModule(
            FakeDataset(16, 32, 4, seed=0), transform, batch_size=8, num_workers=0, patch_size=8
        )

    host_batch = next(iter(datamodule(False).train_dataloader()))
    device_dm = datamodule(True)
    loaded = next(iter(device_dm.train_dataloader()))
    assert loaded.global_crops[0].dtype == torch.uint8  # what crosses to the GPU: a quarter of the bytes
    ready = device_dm.on_after_batch_transfer(loaded, 0)
    for got, want in zip(
        ready.global_crops + ready.local_crops, host_batch.global_crops + host_batch.local_crops
    ):
        assert got.dtype == torch.float32 and torch.equal(got, want)


def test_float_crops_are_taken_as_unit_values_and_integers_refused() -> None:
    # Array files give float crops in [0, 1]: normalised without the division by 255.
    crops = torch.full((1, 3, 2, 2), 0.5)
    got = DeviceNormalize(MEAN, STD).normalize(crops)
    want = torch.tensor([(0.5 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(crops, torch.full((1, 3, 2, 2), 0.5))  # the batch itself is left as it was
    with pytest.raises(TypeError, match=r"DeviceNormalize expects uint8 or float crops, got torch\.int32"):
        DeviceNormalize(MEAN, STD).normalize(torch.zeros(1, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceNormalize(MEAN, (0.5,))


@pytest.mark.parametrize(
    ("given", "expected"), [(None, torch.cuda.is_available()), (True, True), (False, False)]
)
def test_pin_memory_defaults_to_cuda_availability(given: bool | None, expected: bool) -> None:
    dm = SSLDataModule(
        FakeDataset(16, 32, 4, seed=0), MultiCropTransform(32, 16, 2), batch_size=8, num_workers=0,
        patch_size=8, pin_memory=given,
    )  # fmt: skip
    assert dm.pin_memory is expected and dm.train_dataloader().pin_memory is expected
