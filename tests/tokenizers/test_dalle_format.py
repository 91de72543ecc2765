"""A DALL-E-format encoder file, written here key by key, loads as a tokenizer and computes DALL-E's net."""

import pytest
import torch
import torch.nn.functional as F

from sslvit.tokenizers import DALLETokenizer, load_tokenizer

N_HID, VOCAB, GROUPS = 4, 8, 4


def dalle_state_dict(blocks_per_group: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The released encoder's parameter layout: conv weights (out, in, kh, kw), ``w`` / ``b`` names."""

    def conv(prefix, n_in, n_out, k):
        return {
            f"{prefix}.w": torch.randn(n_out, n_in, k, k, generator=generator) / (n_in * k * k) ** 0.5,
            f"{prefix}.b": 0.1 * torch.randn(n_out, generator=generator),
        }

    state = conv("blocks.input", 3, N_HID, 7)
    n_in = N_HID
    for g in range(1, GROUPS + 1):
        n_out = N_HID * 2 ** (g - 1)
        for k in range(1, blocks_per_group + 1):
            p, hid = f"blocks.group_{g}.block_{k}", n_out // 4
            if n_in != n_out:
                state |= conv(f"{p}.id_path", n_in, n_out, 1)
            state |= conv(f"{p}.res_path.conv_1", n_in, hid, 3)
            state |= conv(f"{p}.res_path.conv_2", hid, hid, 3)
            state |= conv(f"{p}.res_path.conv_3", hid, hid, 3)
            state |= conv(f"{p}.res_path.conv_4", hid, n_out, 1)
            n_in = n_out
    return state | conv("blocks.output.conv", n_in, VOCAB, 1)


def reference_logits(state, x, blocks_per_group):
    """DALL-E's encoder written out directly from the paper's description, on the raw tensors."""

    def conv(prefix, h):
        w = state[f"{prefix}.w"]
        return F.conv2d(h, w, state[f"{prefix}.b"], padding=(w.shape[-1] - 1) // 2)

    gain = 1.0 / (GROUPS * blocks_per_group) ** 2
    h = conv("blocks.input", 0.8 * x + 0.1)  # logit-Laplace pixel map, eps = 0.1
    for g in range(1, GROUPS + 1):
        for k in range(1, blocks_per_group + 1):
            p = f"blocks.group_{g}.block_{k}"
            identity = conv(f"{p}.id_path", h) if f"{p}.id_path.w" in state else h
            r = h
            for i in range(1, 5):
                r = conv(f"{p}.res_path.conv_{i}", F.relu(r))
            h = identity + gain * r
        if g < GROUPS:
            h = F.max_pool2d(h, 2)
    return conv("blocks.output.conv", F.relu(h))


@pytest.mark.parametrize(("blocks_per_group", "prefix"), [(1, ""), (2, "encoder.")])
def test_dalle_file_loads_and_matches_the_reference(tmp_path, blocks_per_group, prefix):
    state = dalle_state_dict(blocks_per_group, torch.Generator().manual_seed(0))
    path = tmp_path / "encoder.pt"
    torch.save({prefix + k: v for k, v in state.items()}, path)

    tokenizer = load_tokenizer(path)  # format auto-detected
    assert isinstance(tokenizer, DALLETokenizer)
    assert (tokenizer.vocab_size, tokenizer.downsample) == (VOCAB, 8)
    assert tokenizer.encoder.config_from_state_dict(state)["blocks_per_group"] == blocks_per_group
    assert not any(p.requires_grad for p in tokenizer.parameters()) and not tokenizer.training

    images = torch.rand(2, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    expected = reference_logits(state, images, blocks_per_group)
    assert expected.shape == (2, VOCAB, 4, 2)
    assert torch.allclose(tokenizer.logits(images), expected, atol=1e-5)
    assert torch.equal(tokenizer.encode(images), expected.argmax(dim=1))
    assert torch.equal(load_tokenizer(path, format="dalle").encode(images), tokenizer.encode(images))


def test_files_in_other_layouts_fail_with_one_line(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"pos_embed": torch.zeros(1, 5, 7)}, path)
    with pytest.raises(ValueError, match="neither an sslvit tokenizer nor a DALL-E encoder"):
        load_tokenizer(path)
    with pytest.raises(ValueError, match=r"tokenizer\.format"):
        load_tokenizer(path, format="vqgan")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, not tensors
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_tokenizer(pickled)
