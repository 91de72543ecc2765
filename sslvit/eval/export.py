"""Export a backbone as a timm ``VisionTransformer`` checkpoint (``.pth`` and ``.safetensors``).

A ``MaskedViT`` is timm's ``VisionTransformer`` plus a ``mask_token``, so its state dict minus that one
key loads strictly into ``timm.create_model(arch, pretrained=False, checkpoint_path=file, **kwargs)``
with the kwargs from :func:`timm_spec`. The arch name only picks timm's defaults: the kwargs restate
every architecture value, so any width / depth / patch size reloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.eval.inputs import EvalInputs
from sslvit.utils.atomic_write import atomic_torch_save, atomic_write_bytes, atomic_write_json

# timm's names of its standard ViT widths (embed_dim, depth, heads), for a readable arch name only.
_TIMM_NAMES = {
    (192, 12, 3): "vit_tiny",
    (384, 12, 6): "vit_small",
    (768, 12, 12): "vit_base",
    (1024, 24, 16): "vit_large",
}


def timm_spec(backbone: nn.Module) -> tuple[str, dict[str, Any]]:
    """timm model name and ``create_model`` kwargs that rebuild ``backbone`` (a ``MaskedViT``)."""
    vit: Any = backbone
    if getattr(vit, "rel_pos_bias", None) is not None:
        raise ValueError(
            "this backbone has a shared relative position bias (BEiT); timm's VisionTransformer has no "
            "place for it, so it cannot be exported as one"
        )
    embed_dim, depth, heads = int(vit.embed_dim), len(vit.blocks), int(vit.blocks[0].attn.num_heads)
    # any ViT name would do: the kwargs below override its values
    arch = f"{_TIMM_NAMES.get((embed_dim, depth, heads), 'vit_base')}_patch16_224"
    block = vit.blocks[0]
    has_layerscale = hasattr(block.ls1, "gamma")
    kwargs = {
        "img_size": list(vit.patch_embed.img_size),
        "patch_size": int(vit.patch_embed.patch_size[0]),
        "in_chans": int(vit.patch_embed.proj.in_channels),
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": block.mlp.fc1.out_features / embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "reg_tokens": int(vit.num_reg_tokens),
        # Any non-null value creates the LayerScale gammas; the checkpoint then overwrites them.
        "init_values": 1e-5 if has_layerscale else None,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": True,  # position embedding resampled for other input sizes, as ours
    }
    return arch, kwargs


def timm_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights under timm's names: everything but the pretraining-only ``mask_token``."""
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items() if k != "mask_token"}


def export_timm(backbone: nn.Module, output_dir: str | Path, stem: str = "backbone") -> dict[str, Any]:
    """Write ``<stem>.pth``, ``<stem>.safetensors`` and ``<stem>_timm.json`` (arch + kwargs).

    Returns:
        ``{"pth", "safetensors", "spec", "arch", "kwargs", "num_tensors"}``.
    """
    from safetensors.torch import save as safetensors_bytes

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = timm_state_dict(backbone)
    arch, kwargs = timm_spec(backbone)
    paths = {
        "pth": output_dir / f"{stem}.pth",
        "safetensors": output_dir / f"{stem}.safetensors",
        "spec": output_dir / f"{stem}_timm.json",
    }
    atomic_torch_save(state, paths["pth"], what="weights")
    atomic_write_bytes(safetensors_bytes(state), paths["safetensors"])
    atomic_write_json({"arch": arch, "kwargs": kwargs}, paths["spec"])
    return {
        **{k: str(v) for k, v in paths.items()},
        "arch": arch,
        "kwargs": kwargs,
        "num_tensors": len(state),
    }


@torch.no_grad()
def timm_reload_max_abs_diff(
    backbone: nn.Module, checkpoint_path: str | Path, images: torch.Tensor
) -> dict[str, float]:
    """Reload an export with ``timm.create_model`` and compare its features with ``backbone``'s.

    Returns:
        Max absolute differences of the pooled CLS features (``cls``) and of all normalised tokens
        (``tokens``) on ``images``.
    """
    import timm

    arch, kwargs = timm_spec(backbone)
    reloaded: Any = timm.create_model(arch, pretrained=False, checkpoint_path=str(checkpoint_path), **kwargs)
    reloaded.eval()
    was_training = backbone.training
    backbone.eval()
    try:
        ours = backbone.forward_features(images)  # type: ignore[operator]
        our_tokens = torch.cat(
            [ours["x_norm_clstoken"][:, None], ours["x_norm_regtokens"], ours["x_norm_patchtokens"]], dim=1
        )
        their_tokens = reloaded.forward_features(images)
        cls_diff = (backbone(images) - reloaded(images)).abs().max()
        token_diff = (our_tokens - their_tokens).abs().max()
    finally:
        backbone.train(was_training)
    return {"cls": float(cls_diff), "tokens": float(token_diff)}


def export_evaluation(inputs: EvalInputs, stem: str, check_images: int) -> dict[str, Any]:
    """``eval=export``: write the timm files (:func:`export_timm`) and check that timm reloads them to
    the same features on ``check_images`` val images (seeded noise at the native size without data)."""
    datamodule = inputs.datamodule() if inputs.has_data_config else None
    backbone: Any = inputs.backbone.cpu()
    files = export_timm(backbone, inputs.output_dir, stem=stem)
    if datamodule is not None:
        images = next(iter(datamodule.eval_dataloader("val")))[0][:check_images]
    else:
        height, width = backbone.patch_embed.img_size
        channels = int(backbone.patch_embed.proj.in_channels)
        images = torch.randn(
            check_images, channels, height, width, generator=torch.Generator().manual_seed(0)
        )
    diffs = {fmt: timm_reload_max_abs_diff(backbone, files[fmt], images) for fmt in ("pth", "safetensors")}
    kwargs = ", ".join(f"{k}={v!r}" for k, v in files["kwargs"].items())
    checkpoint = f"checkpoint_path={files['safetensors']!r}"
    print(f"timm arch: {files['arch']}")
    print(f"timm.create_model({files['arch']!r}, pretrained=False, {checkpoint}, {kwargs})")
    metrics = {f"export_max_abs_diff_{fmt}_{part}": d[part] for fmt, d in diffs.items() for part in d}
    return {"metrics": metrics, "files": files}
