"""The export path: a MaskedViT state dict (minus mask_token) is a plain timm ViT state dict."""

from __future__ import annotations

import pytest
import timm
import torch
from toys import build_vit


@pytest.mark.parametrize(("size", "registers"), [("small", 0), ("tiny", 4)])
def test_timm_vit_loads_our_weights_strictly(size: str, registers: int) -> None:
    torch.manual_seed(0)
    ours = build_vit(size, patch_size=16, img_size=224, num_register_tokens=registers).eval()
    state = {k: v for k, v in ours.state_dict().items() if k != "mask_token"}
    assert len(state) == len(ours.state_dict()) - 1
    reference = timm.create_model(
        f"vit_{size}_patch16_224",
        pretrained=False,
        num_classes=0,
        reg_tokens=registers,
        dynamic_img_size=True,
    ).eval()
    reference.load_state_dict(state, strict=True)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-4)
        # Same at a non-native, non-square size: both resample the position embedding identically.
        y = torch.randn(1, 3, 96, 160)
        torch.testing.assert_close(ours(y), reference(y), atol=1e-5, rtol=1e-4)
