"""Gradient clipping per group: global as torch, per parameter as DINO / iBOT, per network as DINOv2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslvit.methods.optim_config import OptimConfig
from sslvit.utils.grad_clip import clip_groups, clipping_groups, measure_and_clip, named_clipping_groups


def networks_with_grads(scale: float = 1.0) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    nets = {"backbone": nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)), "head": nn.Linear(4, 3)}
    for net in nets.values():
        for i, p in enumerate(net.parameters()):
            p.grad = torch.randn_like(p) * scale * (i + 1)  # a spread of norms: some clipped, some not
    return nets


def grads(nets: dict[str, nn.Module]) -> list[torch.Tensor]:
    return [p.grad.clone() for net in nets.values() for p in net.parameters()]  # type: ignore[union-attr]


def test_global_mode_is_torch_clip_grad_norm() -> None:
    nets, ref = networks_with_grads(), networks_with_grads()
    norm = clip_groups(clipping_groups(nets, "global"), 2.0)
    ref_norm = nn.utils.clip_grad_norm_([p for net in ref.values() for p in net.parameters()], 2.0)
    assert norm is not None and ref_norm > 2.0
    # Tolerances, not bit equality: two implementations may sum the squares in another order.
    torch.testing.assert_close(norm[0], ref_norm, rtol=1e-6, atol=0)
    for got, want in zip(grads(nets), grads(ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_per_parameter_mode_is_dino_clip_gradients() -> None:
    nets, ref = networks_with_grads(), networks_with_grads()
    norms = clip_groups(clipping_groups(nets, "per_parameter"), 3.0)
    clipped = 0
    for p in (p for net in ref.values() for p in net.parameters()):  # the official loop, per parameter
        coef = 3.0 / (p.grad.norm(2) + 1e-6)  # type: ignore[union-attr]
        if coef < 1:
            p.grad.mul_(coef)  # type: ignore[union-attr]
            clipped += 1
    assert 0 < clipped < len(grads(ref))  # some parameters clipped, others not
    assert norms is not None and norms.shape == (len(grads(ref)),)
    for got, want in zip(grads(nets), grads(ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_per_network_mode_clips_each_network_on_its_own() -> None:
    nets, ref = networks_with_grads(), networks_with_grads()
    norms = clip_groups(clipping_groups(nets, "per_network"), 10.0)
    ref_norms = torch.stack([nn.utils.clip_grad_norm_(net.parameters(), 10.0) for net in ref.values()])
    assert norms is not None
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=0)
    assert (ref_norms > 10.0).any() and (ref_norms < 10.0).any()  # one network clipped, one not
    for got, want in zip(grads(nets), grads(ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_parameters_without_gradients_or_frozen_are_left_out() -> None:
    nets = networks_with_grads()
    frozen = nets["head"].weight
    frozen.requires_grad_(False)
    nets["head"].bias.grad = None  # e.g. the prototypes during the frozen first epoch
    before = frozen.grad.clone()  # type: ignore[union-attr]
    assert all(p is not frozen for group in clipping_groups(nets, "per_parameter") for p in group)
    norms = clip_groups(clipping_groups(nets, "per_network"), 1e-3)
    assert norms is not None and norms.shape == (1,)  # the head has no gradient left to clip
    assert torch.equal(frozen.grad, before)  # type: ignore[arg-type]
    assert clip_groups([[nets["head"].bias]], 1.0) is None


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="clip_grad_mode must be one of"):
        clipping_groups(networks_with_grads(), "per_layer")
    with pytest.raises(ValueError, match=r"optim\.clip_grad_mode must be one of"):
        OptimConfig(clip_grad_mode="norm")


def test_groups_follow_the_given_order() -> None:
    """The optimizer's order (the rounding of a group's norm depends on the order of the sum)."""
    nets = networks_with_grads()
    params = [p for net in nets.values() for p in net.parameters()]
    order = params[::-1]
    assert clipping_groups(nets, "global", order) == [order]
    backbone, head = clipping_groups(nets, "per_network", order)
    assert (
        backbone == list(nets["backbone"].parameters())[::-1]
        and head == list(nets["head"].parameters())[::-1]
    )
    assert clipping_groups(nets, "per_parameter", order) == [[p] for p in order]
    assert clipping_groups(nets, "global") == [params]  # no order: the networks' own


def test_named_groups_and_measuring_without_clipping() -> None:
    """clip_grad = 0 measures only (the norms tell a step with non-finite gradients), and the norms
    say which named groups they belong to."""
    nets, ref = networks_with_grads(), networks_with_grads()
    named = named_clipping_groups(nets, "per_network")
    assert list(named) == ["backbone", "head"]
    assert list(named_clipping_groups(nets, "global")) == ["all"]
    assert list(named_clipping_groups(nets, "per_parameter"))[:2] == ["backbone.0.weight", "backbone.0.bias"]
    nets["backbone"][1].bias.grad = None  # type: ignore[union-attr]
    nets["head"].weight.grad[0, 0] = float("inf")  # type: ignore[index]
    measured = measure_and_clip(list(named_clipping_groups(nets, "per_parameter").values()), 0.0)
    assert measured is not None
    names = list(named_clipping_groups(nets, "per_parameter"))
    assert "backbone.1.bias" not in [names[i] for i in measured.indices]  # no gradient: left out
    bad = [names[i] for i, norm in zip(measured.indices, measured.norms, strict=True) if not norm.isfinite()]
    assert bad == ["head.weight"]
    unchanged = [
        torch.equal(p.grad, q.grad)  # type: ignore[arg-type]
        for p, q in zip(
            (p for net in nets.values() for p in net.parameters()),
            (q for net in ref.values() for q in net.parameters()),
            strict=True,
        )
        if p.grad is not None and p is not nets["head"].weight
    ]
    assert len(unchanged) == 4 and all(unchanged)  # measured, not scaled
