"""Distributed building blocks give the single-process answer (2 CPU processes, gloo, subprocess)."""

from pathlib import Path

import pytest
import torch
from toys import tiny_dino
from two_processes import load_worker as load_two_process_worker
from two_processes import run_on_two_processes

from sslvit.losses import Centering, SinkhornKnopp

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def ddp_results(ddp_out) -> dict:
    out = ddp_out / "results.pt"
    run_on_two_processes(WORKER, out)
    return torch.load(out)


def load_worker():
    return load_two_process_worker(WORKER)


@pytest.mark.ddp
def test_sinkhorn_targets_equal_single_process_on_concatenated_batch(ddp_results):
    worker = load_worker()
    single = SinkhornKnopp(num_iters=3).probs(worker.global_teacher_logits(), temperature=0.5)
    assert torch.allclose(ddp_results["sinkhorn"], single, atol=1e-6)
    # unequal row counts per rank (masked patch tokens): the global count is all-reduced
    single_uneven = SinkhornKnopp(num_iters=3).probs(worker.uneven_patch_logits(), temperature=0.5)
    assert torch.allclose(ddp_results["sinkhorn_uneven"], single_uneven, atol=1e-6)
    # and a per-rank normalisation would differ
    per_rank = SinkhornKnopp(num_iters=3).probs(worker.uneven_patch_logits()[:3], temperature=0.5)
    assert not torch.allclose(ddp_results["sinkhorn_uneven"][:3], per_rank, atol=1e-3)


@pytest.mark.ddp
def test_center_is_mean_over_global_batch(ddp_results):
    logits = load_worker().global_teacher_logits()

    single = Centering(out_dim=5, momentum=0.9)
    single.update(logits)
    single.update(logits * 2.0)
    assert ddp_results["world"] == 2
    assert torch.allclose(ddp_results["center"], single.center, atol=1e-6)
    # and it is not the mean of one shard alone
    shard_only = Centering(out_dim=5, momentum=0.9)
    shard_only.update(logits[:4])
    shard_only.update(logits[:4] * 2.0)
    assert not torch.allclose(ddp_results["center"], shard_only.center, atol=1e-3)


@pytest.mark.ddp
def test_center_with_uneven_rows_is_the_global_mean_on_every_rank(ddp_results):
    """10 rows on rank 0 and 30 on rank 1: both ranks hold the center of one process with all 40."""
    logits = load_worker().uneven_center_logits()
    single = Centering(out_dim=5, momentum=0.9)
    single.update(logits)
    rank0, rank1 = ddp_results["centers_uneven"]
    torch.testing.assert_close(rank0, single.center[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(rank1, single.center[0], atol=1e-6, rtol=0)
    # dividing the summed rows by (local rows x world size) would give each rank another center
    wrong_rank0 = 0.1 * logits.sum(0) / (10 * 2)
    assert not torch.allclose(rank0, wrong_rank0, atol=1e-3)


@pytest.mark.ddp
def test_knn_accuracy_equals_single_process(ddp_results):
    """Sharded, padded eval loaders + gathered features give the one-process k-NN figures exactly."""
    worker = load_worker()
    single = worker.knn_result(worker.knn_model(), worker.knn_datamodule())
    assert ddp_results["knn"] == single["knn"]
    assert torch.equal(ddp_results["knn_bank_labels"], single["knn_bank_labels"])
    torch.testing.assert_close(ddp_results["knn_bank"], single["knn_bank"])
    assert ddp_results["knn_bank"].shape[0] == 13  # the sampler's padding row was dropped


@pytest.mark.ddp
def test_fsdp_keeps_weight_decay_groups(ddp_results):
    """FSDP turns every parameter into a 1-d shard; biases and norms must still be the only exemptions."""
    fsdp = ddp_results["fsdp"]
    assert fsdp["fsdp_ndims"] == [1] and fsdp["fsdp_wrapped_names"]  # what makes this test bite
    assert fsdp["fsdp"] == fsdp["plain"]
    assert fsdp["plain"]["backbone.blocks.0.attn.qkv.weight"] is True
    assert fsdp["plain"]["backbone.blocks.0.attn.qkv.bias"] is False


@pytest.mark.ddp
def test_sharded_fsdp_checkpoint_consolidates_into_an_init_from_file(ddp_results, ddp_out):
    """The export path of trainer=fsdp: sharded folder -> one file -> init_from, weights unchanged."""
    from sslvit.train import init_backbones
    from sslvit.utils.fsdp import consolidate_sharded_checkpoint

    sharded = ddp_out / "sharded.ckpt"
    assert sharded.is_dir() and (sharded / "meta.pt").is_file()
    single = consolidate_sharded_checkpoint(sharded)
    assert single == ddp_out / "sharded.ckpt.consolidated"
    reference = load_worker().knn_model()  # the weights the workers wrapped and saved
    fresh = tiny_dino()
    init_backbones(fresh, str(single))
    for name, value in reference.teacher["backbone"].state_dict().items():
        assert torch.equal(fresh.student["backbone"].state_dict()[name], value), name


@pytest.mark.ddp
@pytest.mark.parametrize("mode", ["global", "per_network", "per_parameter"])
def test_clipping_fsdp_shards_equals_clipping_whole_gradients(ddp_results, mode):
    """Each rank holds a shard of every gradient: the norms are summed over ranks before clipping."""
    from sslvit.utils.grad_clip import clip_groups, clipping_groups

    worker = load_worker()
    model = worker.ClipToy()
    model(worker.clip_images()).backward()
    whole = {name: p.grad.norm() for name, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():  # FSDP gives the unused mask token a zero gradient: so does the reference
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    norms = clip_groups(clipping_groups(model.networks(), mode), worker.CLIP_MAX_NORM)
    sharded = ddp_results["fsdp_clipping"][mode]
    torch.testing.assert_close(sharded["norms"], norms, rtol=1e-5, atol=1e-8)
    assert sharded["norms"].shape == norms.shape
    # the test bites: some gradients (networks) clipped, others kept
    assert min(whole.values()) < worker.CLIP_MAX_NORM < max(whole.values())
    if mode == "per_network":
        assert norms.min() < worker.CLIP_MAX_NORM < norms.max()
    for name, p in model.named_parameters():
        torch.testing.assert_close(sharded["grads"][name], p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.ddp
def test_gram_teacher_refresh_under_fsdp_copies_the_whole_ema_teacher(ddp_results):
    result = ddp_results["fsdp_gram"]
    assert result["gram"].keys() == result["teacher"].keys()
    for name, value in result["teacher"].items():
        torch.testing.assert_close(result["gram"][name], value, rtol=0, atol=1e-7, msg=name)
        # the teacher had moved from the snapshot (the student's copy): the refresh did something
        assert (value - result["student"][name]).abs().max() > 1e-3, name
    assert result["unaligned"]  # a name-by-name copy of the shards alone would not do


@pytest.mark.ddp
def test_ema_teacher_update_under_fsdp_equals_the_update_of_whole_networks(ddp_results):
    """trainer=fsdp's wrap policy: blocks and heads average shard to shard, the root unit is gathered."""
    result = ddp_results["fsdp_ema"]
    assert "student.head._fsdp_wrapped_module" in result["wrapped"]  # heads are units of their own
    assert "teacher.head._fsdp_wrapped_module" in result["wrapped"]
    assert "teacher.backbone.blocks.0._fsdp_wrapped_module" in result["wrapped"]
    assert result["unaligned"]  # without the root unit gathered the pairs do not line up: a clear error
    teacher, student = result["teacher"], result["student"]
    assert result["after"].keys() == teacher.keys()
    for name, value in result["after"].items():
        expected = teacher[name].lerp(student[name], 0.1)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=name)
        assert (value - teacher[name]).abs().max() > 1e-5, name  # the student had moved: so did the teacher
