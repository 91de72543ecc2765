"""GlobalBatchNorm1d with no process group is batch norm; DINOHead uses it (state dicts interchangeable)."""

import pytest
import torch

from sslvit.heads import DINOHead, GlobalBatchNorm1d


def test_equals_batch_norm_forward_and_gradients_without_process_group() -> None:
    g = torch.Generator().manual_seed(0)
    x = (3.0 + torch.randn(10, 5, generator=g)).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    target = torch.randn(10, 5, generator=g)
    norm, reference = GlobalBatchNorm1d(5), torch.nn.BatchNorm1d(5, track_running_stats=False)
    with torch.no_grad():
        for module in (norm, reference):
            module.weight.copy_(torch.linspace(0.5, 2.0, 5))
            module.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    out, out_ref = norm(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    (out * target).sum().backward()
    (out_ref * target).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-5)


def test_state_dict_is_batch_norm_s_and_bad_input_is_one_clear_error() -> None:
    norm = GlobalBatchNorm1d(4)
    assert set(norm.state_dict()) == set(torch.nn.BatchNorm1d(4, track_running_stats=False).state_dict())
    with pytest.raises(ValueError, match=r"expects \(N, 4\) input, got \(2, 3\)"):
        norm(torch.zeros(2, 3))


def test_dino_head_batch_norm_is_global_and_not_a_torch_batch_norm() -> None:
    """Lightning's sync_batchnorm converts torch batch norms (and fails on CPU): the head has none."""
    head = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=4, use_bn=True)
    assert sum(isinstance(m, GlobalBatchNorm1d) for m in head.modules()) == 2
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.modules())
