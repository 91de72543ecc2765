"""End-to-end fine-tuning with layer-wise learning-rate decay (BEiT's fine-tuning protocol).

Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022 (arXiv:2106.08254): the patch
tokens of the last layer are average-pooled and fed to a linear head; the whole network is trained with
AdamW, a warm-up then cosine learning rate, and layer-wise lr decay -- block ``i`` of ``L`` trains at
``lr * decay ** (L + 1 - (i + 1))``, the embeddings at ``lr * decay ** (L + 1)``, the head at ``lr``
(BEiT: decay 0.65 for ViT-B). The schedule here is short and configurable; images are the evaluation
transform's (no augmentation, no mixup), which suits a quick check rather than a paper figure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sslvit.eval.inputs import EvalInputs
from sslvit.utils.param_groups import param_groups
from sslvit.utils.schedules import cosine_schedule

log = logging.getLogger(__name__)


class PooledClassifier(nn.Module):
    """Backbone -> mean of the normalised patch tokens -> linear head (BEiT, arXiv:2106.08254).

    Args:
        backbone: a ``MaskedViT`` (anything whose ``forward_features`` returns ``x_norm_patchtokens``).
        num_classes: number of output classes.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.embed_dim), num_classes)  # type: ignore[arg-type]
        # A near-zero head makes the first steps a pure linear fit, not a shock to the backbone.
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.backbone.forward_features(images)["x_norm_patchtokens"]  # type: ignore[operator]
        return self.head(patches.mean(dim=1))  # (B, N, D) -> (B, D) -> (B, C)

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases, norms, position embedding and tokens are not decayed."""
        exempt = self.backbone.no_weight_decay()  # type: ignore[operator]
        return param.ndim <= 1 or name.removeprefix("backbone.") in exempt

    def layer_id(self, name: str) -> int:
        """Backbone depth of a parameter; the head sits above the last block."""
        if name.startswith("backbone."):
            return int(self.backbone.layer_id(name.removeprefix("backbone.")))  # type: ignore[operator]
        return len(self.backbone.blocks) + 1  # type: ignore[arg-type]


@torch.no_grad()
def classifier_accuracy(model: nn.Module, loader: Iterable[Any], device: torch.device | str) -> float:
    """Top-1 accuracy in percent of ``model`` over ``(images, labels, ...)`` batches."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        images, labels = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluation loader yielded no samples")
    return 100.0 * correct / total


def finetune(
    backbone: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    num_classes: int,
    epochs: int = 2,
    lr: float = 1e-3,
    min_lr: float = 1e-6,
    warmup_epochs: float = 0.5,
    layer_decay: float = 0.65,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    clip_grad: float = 3.0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with a pooled linear head; return losses and test accuracy.

    Args:
        backbone: a ``MaskedViT`` (trained in place).
        train_loader: shuffled ``(images, labels, ...)`` batches; ``len()`` must work.
        test_loader: evaluation batches.
        num_classes: number of classes.
        epochs: passes over ``train_loader``.
        lr: peak learning rate of the head (the top layer).
        min_lr: final learning rate of the cosine.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        layer_decay: layer-wise lr decay factor (1.0 disables it).
        weight_decay: AdamW weight decay on the decayed parameters.
        betas: AdamW betas.
        clip_grad: gradient-norm clipping threshold (0 disables it).
        device: where to train.

    Returns:
        ``test_top1`` (after), ``test_top1_before`` (backbone as given, zero head: chance), the mean
        training loss of the first and last epoch, and the lr scale of each layer.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    model = PooledClassifier(backbone, num_classes).to(device)
    depth = len(backbone.blocks)  # type: ignore[arg-type]
    groups = param_groups(
        model.named_parameters(),
        no_weight_decay=model.no_weight_decay,
        layer_id=model.layer_id,
        num_layers=depth,
        layer_decay=layer_decay,
    )
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=betas)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    before = classifier_accuracy(model, test_loader, device)
    epoch_losses, step = [], 0
    model.train()
    for _ in range(epochs):
        # Summed and checked on the device, read once per epoch: a read per step would make the host wait
        # for every step before queueing the next one.
        loss_sum = torch.zeros((), device=device)
        first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        batches = 0
        for batch in train_loader:
            images = batch[0].to(device, non_blocking=True)
            labels = torch.as_tensor(batch[1]).to(device, non_blocking=True)
            scheduled = cosine_schedule(step, total, lr, min_lr, warmup_steps=warmup)
            for group in optimizer.param_groups:
                group["lr"] = scheduled * group["lr_scale"]
                group["weight_decay"] = weight_decay if group["apply_wd"] else 0.0
            loss = F.cross_entropy(model(images), labels)
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            loss_sum += loss.detach()
            step, batches = step + 1, batches + 1
        if int(first_bad_step) >= 0:
            raise FloatingPointError(
                f"fine-tuning loss is not finite from step {int(first_bad_step)} on; lower eval.lr"
            )
        epoch_losses.append(float(loss_sum) / max(1, batches))
        log.info("fine-tuning epoch %d/%d: mean train loss %.4f", len(epoch_losses), epochs, epoch_losses[-1])
    lr_scales = {}
    for group in groups:
        for name in group["names"]:
            lr_scales[name] = group["lr_scale"]
    return {
        "test_top1": classifier_accuracy(model, test_loader, device),
        "test_top1_before": before,
        "train_loss_first_epoch": epoch_losses[0],
        "train_loss_last_epoch": epoch_losses[-1],
        "steps": step,
        "lr_scale_by_layer": {
            "embeddings": lr_scales.get("backbone.patch_embed.proj.weight"),
            "block0": lr_scales.get("backbone.blocks.0.attn.qkv.weight"),
            f"block{depth - 1}": lr_scales.get(f"backbone.blocks.{depth - 1}.attn.qkv.weight"),
            "head": lr_scales.get("head.weight"),
        },
    }


def finetune_evaluation(
    inputs: EvalInputs,
    batch_size: int,
    epochs: int,
    lr: float,
    min_lr: float,
    warmup_epochs: float,
    layer_decay: float,
    weight_decay: float,
    clip_grad: float,
) -> dict[str, Any]:
    """``eval=finetune``: :func:`finetune` on the evaluation train subset, shuffled in batches of
    ``batch_size``, tested on the val subset. Other arguments as in :func:`finetune`."""
    datamodule = inputs.datamodule()
    backbone = inputs.backbone.to(inputs.device)
    train_eval = datamodule.eval_dataloader("train")
    train_loader = DataLoader(
        train_eval.dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=train_eval.collate_fn,
        num_workers=datamodule.num_workers,
    )
    result = finetune(
        backbone, train_loader, datamodule.eval_dataloader("val"), datamodule.num_classes,
        epochs=epochs, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs, layer_decay=layer_decay,
        weight_decay=weight_decay, clip_grad=clip_grad, device=inputs.device,
    )  # fmt: skip
    metrics = {k: result[k] for k in ("test_top1", "test_top1_before")}
    return {"metrics": {f"finetune_{k}": v for k, v in metrics.items()}, "details": result}
