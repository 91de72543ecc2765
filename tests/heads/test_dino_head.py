import torch
import torch.nn.functional as F

from sslvit.heads import DINOHead


def test_dino_head_logits_are_cosines_with_unit_prototypes():
    torch.manual_seed(0)
    head = DINOHead(in_dim=16, out_dim=32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    x = torch.randn(5, 16)
    logits = head(x)
    assert logits.shape == (5, 32)
    # |cosine| <= 1 and equality with an explicit computation
    embed = F.normalize(head.mlp(x), dim=-1)
    expected = embed @ F.normalize(head.prototypes, dim=-1).T
    assert torch.allclose(logits, expected, atol=1e-6)
    assert logits.abs().max() <= 1.0 + 1e-6
    # scaling a prototype does not change the output: the norm is fixed to 1
    with torch.no_grad():
        head.prototypes[3] *= 7.0
    assert torch.allclose(head(x), logits, atol=1e-6)
    assert not head.prototype_gain.requires_grad


def test_dino_head_learnable_gain_when_not_normalised():
    head = DINOHead(8, 4, hidden_dim=8, bottleneck_dim=4, nlayers=1, norm_last_layer=False)
    assert head.prototype_gain.requires_grad
    assert len(head.mlp) == 1


def test_dino_head_batch_norm_removes_what_every_sample_shares():
    torch.manual_seed(0)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, nlayers=3, use_bn=True)
    x = torch.randn(6, 16)
    shared = 50.0 * torch.randn(1, 16)  # one offset common to every sample, as in a fresh ViT's CLS
    # Batch statistics in both modes (the teacher runs in eval mode): the offset is normalised away
    # after the first linear layer, so the logits do not change.
    for mode in (True, False):
        head.train(mode)
        assert torch.allclose(head(x + shared), head(x), atol=1e-4)
    plain = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    assert not torch.allclose(plain(x + shared), plain(x), atol=1e-2)


def test_dino_head_batch_norm_accepts_token_grids():
    torch.manual_seed(0)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, nlayers=2, use_bn=True)
    tokens = torch.randn(3, 5, 16)  # (B, N, D) patch tokens, as iBOT's patch head sees them
    out = head(tokens)
    assert out.shape == (3, 5, 32)
    assert torch.allclose(out.reshape(15, 32), head(tokens.reshape(15, 16)), atol=1e-6)
