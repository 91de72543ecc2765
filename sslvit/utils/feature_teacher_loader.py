"""Building the frozen feature teacher of VQ-KD from one of our checkpoints or a local timm ViT file."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sslvit.backbones.feature_teacher import FeatureTeacher
from sslvit.utils.checkpoint import backbone_state_dict, load_backbone_weights
from sslvit.utils.checkpoint_reader import RUN_CONFIG_KEY, read_checkpoint
from sslvit.utils.safe_config import instantiate_stored

# Classifier weights that a timm weights file may carry but a num_classes=0 model has no place for.
_CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def load_feature_teacher(
    path: str | None = None, arch: str | None = None, weights: str | None = None, in_chans: int | None = None
) -> FeatureTeacher:
    """Build the frozen teacher from ``teacher.path`` or ``teacher.arch`` + ``teacher.weights``.

    Args:
        path: one of our checkpoints (DINO / iBOT / DINOv2 runs): the backbone is rebuilt from the config
            stored in it (``sslvit_config``; sslvit's own classes only) and gets the checkpoint's *teacher*
            backbone weights.
        arch: a timm ViT name (``vit_base_patch16_224``, ...), created with ``pretrained=False``.
        weights: a local state-dict file for ``arch`` (``.safetensors``, ``.pth``, ``.bin``; no downloads).
        in_chans: channels of the images the teacher reads (``data.in_chans``); a teacher trained on
            another count gets its patch embedding adapted
            (:func:`~sslvit.utils.checkpoint.fit_input_channels`). None: the teacher's own.
    """
    if path and (arch or weights):
        raise ValueError("give either teacher.path=<sslvit checkpoint> or teacher.arch + teacher.weights")
    if path:
        return FeatureTeacher(_backbone_from_run(path, in_chans))
    if arch:
        if not weights:
            raise ValueError(
                f"teacher.arch={arch} needs teacher.weights=<local file> (nothing is downloaded)"
            )
        return FeatureTeacher(_timm_model(arch, weights, in_chans))
    raise ValueError(
        "VQ-KD needs a teacher: teacher.path=<checkpoint of a DINO/iBOT/DINOv2 run> or "
        "teacher.arch=<timm ViT name> teacher.weights=<file>"
    )


def _backbone_from_run(path: str, in_chans: int | None = None) -> nn.Module:
    source = f"teacher.path={path}"
    checkpoint = read_checkpoint(path, source)
    if not is_run_checkpoint(checkpoint):
        raise ValueError(
            f"{source} is not a checkpoint of sslvit's train.py (no {RUN_CONFIG_KEY} with a backbone); "
            "for other weights use teacher.arch=<timm name> teacher.weights=<file>"
        )
    return backbone_from_run(checkpoint, source, in_chans)


def is_run_checkpoint(checkpoint: dict) -> bool:
    """Whether a loaded file is a checkpoint of our train.py (weights and the run's backbone config)."""
    run_cfg = checkpoint.get(RUN_CONFIG_KEY)
    return isinstance(run_cfg, dict) and bool(run_cfg.get("backbone")) and "state_dict" in checkpoint


def backbone_from_run(checkpoint: dict, source: str, in_chans: int | None = None) -> nn.Module:
    """The backbone of one of our run checkpoints (:func:`is_run_checkpoint`), with its evaluation
    weights: the EMA teacher's where the run has one, else the student's; built for ``in_chans``
    channels when given (the patch embedding adapted), else the run's own."""
    run_cfg = checkpoint[RUN_CONFIG_KEY]
    # The backbone config of the teacher's own run: built only from allowed classes.
    stored = dict(run_cfg["backbone"])
    if in_chans is not None and "in_chans" in stored:
        stored["in_chans"] = int(in_chans)
    backbone = instantiate_stored(stored, source, f"{RUN_CONFIG_KEY}.backbone")
    load_backbone_weights(backbone, backbone_state_dict(checkpoint), source=source)
    return backbone


def _timm_model(arch: str, weights: str, in_chans: int | None = None) -> nn.Module:
    import timm

    channels: dict[str, Any] = {} if in_chans is None else {"in_chans": int(in_chans)}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **channels)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ValueError(f"teacher.arch={arch}: {str(err).splitlines()[0]}") from err
    except TypeError as err:  # not a ViT family model (no dynamic_img_size)
        raise ValueError(f"teacher.arch={arch} is not a timm ViT with patch tokens: {err}") from err
    state = _read_state_dict(weights)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_CLASSIFIER_PREFIXES)}
    load_backbone_weights(model, state, source=f"teacher.weights={weights}")
    return model


def _read_state_dict(weights: str) -> dict[str, Tensor]:
    state = read_checkpoint(weights, f"teacher.weights={weights}")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}
