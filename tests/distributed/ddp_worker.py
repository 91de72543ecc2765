"""Run by ``torch.distributed.run`` with 2 CPU processes (gloo) from test_ddp.py.

Each rank feeds its own shard of a fixed global batch to the distributed building blocks and rank 0
saves the results, which the test compares with one process holding the concatenated batch. The same
processes also run the k-NN evaluation path (sharded eval loaders, gathered features) and wrap a tiny
DINO in FSDP on the CPU to check its optimizer parameter groups, clip FSDP-sharded gradients and
refresh a DINOv2 Gram teacher and update an EMA teacher from FSDP-sharded parameters.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for toys

from sslvit.callbacks import extract_features
from sslvit.data import EvalTransform, FakeDataset, SingleCropTransform, SSLDataModule
from sslvit.eval.knn import knn_accuracy
from sslvit.losses import Centering, SinkhornKnopp

KNN_KS = (1, 3, 5)


def knn_model():
    """Identically initialised on every rank: the features depend only on the images."""
    from toys import tiny_dino

    torch.manual_seed(0)
    return tiny_dino().eval()


def knn_datamodule() -> SSLDataModule:
    """13 bank images and 7 queries: neither splits evenly over 2 ranks (the sampler pads)."""
    return SSLDataModule(
        train_set=FakeDataset(num_samples=8, image_size=16),
        transform=SingleCropTransform(16),
        batch_size=4,
        num_workers=0,
        patch_size=4,
        eval_train_set=FakeDataset(num_samples=13, image_size=16, seed=0),
        eval_val_set=FakeDataset(num_samples=7, image_size=16, seed=1),
        eval_transform=EvalTransform(size=16, mean=(0.5,) * 3, std=(0.5,) * 3),
        eval_batch_size=3,
    )


def knn_result(model, datamodule: SSLDataModule) -> dict:
    """The KNNEvaluation path: eval loaders (sharded under DDP) -> gathered features -> weighted k-NN."""
    bank, bank_labels = extract_features(model, datamodule.eval_dataloader("train"))
    queries, query_labels = extract_features(model, datamodule.eval_dataloader("val"))
    accuracy = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=4, ks=KNN_KS)
    return {"knn": accuracy, "knn_bank": bank, "knn_bank_labels": bank_labels}


def fsdp_param_groups(sharded_dir: Path) -> dict:
    """apply_wd of every student parameter, plain and after FSDP wrapped each ViT block (use_orig_params);
    then a sharded checkpoint of the wrapped model written the way trainer=fsdp writes one."""
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save, _get_sharded_state_dict_context
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from sslvit.utils.fsdp import module_classes, unwrapped_name

    def groups(model) -> dict[str, bool]:
        return {
            unwrapped_name(name): group["apply_wd"]
            for group in model.configure_optimizers().param_groups
            for name in group["names"]
        }

    model = knn_model()
    model.setup("fit")  # Lightning calls setup before the strategy wraps the model
    plain = groups(model)
    policy = ModuleWrapPolicy(module_classes(["timm.models.vision_transformer.Block"]))
    root = FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
    )
    with _get_sharded_state_dict_context(root):  # as FSDPStrategy.save_checkpoint(state_dict_type="sharded")
        _distributed_checkpoint_save({"model": root.state_dict()}, sharded_dir)
    if dist.get_rank() == 0:
        torch.save({"global_step": 0}, sharded_dir / "meta.pt")
    return {
        "plain": plain,
        "fsdp": groups(model),
        "fsdp_ndims": sorted({p.ndim for p in model.student.parameters()}),
        "fsdp_wrapped_names": any("_fsdp_wrapped_module" in n for n, _ in model.student.named_parameters()),
    }


class ClipToy(torch.nn.Module):
    """Two networks (a ViT whose blocks FSDP wraps, a linear head) and a scalar loss."""

    def __init__(self) -> None:
        super().__init__()
        from sslvit.backbones import MaskedViT

        torch.manual_seed(0)
        self.backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
        self.head = torch.nn.Linear(16, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)).square().mean()

    def networks(self) -> dict:
        return {"backbone": self.backbone, "head": self.head}


CLIP_MAX_NORM = 2.0  # between ClipToy's smallest and largest gradient norms, per parameter and network


def clip_images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def fsdp_clipping() -> dict:
    """Gradients of ClipToy sharded by FSDP (the same batch on every rank, so the averaged gradient is the
    single-process one), clipped on the shards in each mode; the groups' norms and the full gradients."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from sslvit.utils.fsdp import module_classes, unwrapped_name
    from sslvit.utils.grad_clip import CLIP_MODES, clip_groups, clipping_groups

    results = {}
    for mode in CLIP_MODES:
        model = ClipToy()
        policy = ModuleWrapPolicy(module_classes(["timm.models.vision_transformer.Block"]))
        root = FullyShardedDataParallel(
            model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
        )
        root(clip_images()).backward()
        norms = clip_groups(clipping_groups(model.networks(), mode), CLIP_MAX_NORM, sharded=True)
        with FullyShardedDataParallel.summon_full_params(root, with_grads=True):
            grads = {unwrapped_name(n): p.grad.clone() for n, p in model.named_parameters()}
        results[mode] = {"norms": norms, "grads": grads}
    return results


def fsdp_gram_refresh() -> dict:
    """A tiny DINOv2 with Gram anchoring wrapped as trainer=fsdp wraps it (one unit per ViT block, the
    rest in the root unit): the EMA teacher moved away from the Gram teacher, then the Gram teacher
    refreshed from it on the shards; both backbones gathered whole afterwards."""
    from method_toys import build
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from sslvit.methods import GramConfig
    from sslvit.utils.fsdp import module_classes, unwrapped_name

    model = build("dinov2", 4, gram=GramConfig(enabled=True))
    policy = ModuleWrapPolicy(module_classes(["timm.models.vision_transformer.Block"]))
    root = FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
    )
    with FullyShardedDataParallel.summon_full_params(root, writeback=True):
        for i, p in enumerate(model.teacher["backbone"].parameters()):
            p.add_(0.01 * (i + 1))  # as the EMA would, by a different amount per tensor
    try:  # shard to shard without gathering the root unit: its slices do not line up
        model.gram_teacher.refresh(model.teacher["backbone"])
        unaligned = False
    except RuntimeError:
        unaligned = True
    model.gram_teacher.refresh(model.teacher["backbone"], sharded_root=root)

    def whole(network) -> dict:
        return {unwrapped_name(n): p.detach().clone() for n, p in network.named_parameters()}

    with FullyShardedDataParallel.summon_full_params(root):
        return {
            "gram": whole(model.gram_teacher.backbone),
            "teacher": whole(model.teacher["backbone"]),
            "student": whole(model.student["backbone"]),
            "unaligned": unaligned,
        }


def fsdp_ema_update() -> dict:
    """A tiny DINO wrapped with conf/trainer/fsdp.yaml's wrap policy, its student moved, then one EMA
    teacher update on the shards (the root unit gathered); both networks gathered whole before and after."""
    from method_toys import build
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from sslvit.utils.fsdp import module_classes, unwrapped_name

    conf = Path(__file__).resolve().parents[2] / "conf"
    names = OmegaConf.load(conf / "trainer" / "fsdp.yaml").strategy.auto_wrap_policy.names
    model = build("dino", 4)
    policy = ModuleWrapPolicy(module_classes(list(names)))
    root = FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
    )

    def whole(network) -> dict:
        return {unwrapped_name(n): p.detach().clone() for n, p in network.named_parameters()}

    with torch.no_grad(), FullyShardedDataParallel.summon_full_params(root, writeback=True):
        for i, p in enumerate(model.student.parameters()):
            p.add_(0.01 * (i + 1))  # as optimizer steps would, by a different amount per tensor
    with FullyShardedDataParallel.summon_full_params(root):
        before = {"teacher": whole(model.teacher), "student": whole(model.student)}
    try:  # shard to shard without gathering the root unit: its slices do not line up
        model.teacher.ema_update(model.student, 0.9)
        unaligned = False
    except ValueError:
        unaligned = True
    model.teacher.ema_update(model.student, 0.9, sharded_root=root)
    with FullyShardedDataParallel.summon_full_params(root):
        after = whole(model.teacher)
    wrapped = [n for n, _ in model.named_modules() if n.endswith("_fsdp_wrapped_module")]
    return {**before, "after": after, "unaligned": unaligned, "wrapped": wrapped}


def global_teacher_logits() -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(123))  # (world * 4, K)


def uneven_patch_logits() -> torch.Tensor:
    """8 rows split 3 / 5 over two ranks, like masked patch tokens."""
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(7))


def uneven_center_logits() -> torch.Tensor:
    """40 rows split 10 / 30 over two ranks (per-rank masked-token counts differ)."""
    return torch.randn(40, 5, generator=torch.Generator().manual_seed(11))


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = global_teacher_logits().chunk(world)[rank]

    centering = Centering(out_dim=5, momentum=0.9)
    centering.update(shard)
    centering.update(shard * 2.0)

    uneven_centering = Centering(out_dim=5, momentum=0.9)
    uneven_centering.update(uneven_center_logits()[:10] if rank == 0 else uneven_center_logits()[10:])
    centers_uneven = [torch.empty(1, 5) for _ in range(world)]
    dist.all_gather(centers_uneven, uneven_centering.center)

    sinkhorn = SinkhornKnopp(num_iters=3).probs(shard, temperature=0.5)
    uneven = uneven_patch_logits()
    uneven_shard = uneven[:3] if rank == 0 else uneven[3:]
    uneven_targets = SinkhornKnopp(num_iters=3).probs(uneven_shard, temperature=0.5)
    sinkhorn_all = [torch.empty_like(sinkhorn) for _ in range(world)]
    dist.all_gather(sinkhorn_all, sinkhorn)
    padded = torch.zeros(5, 6)  # gloo gathers equal shapes: pad to the larger shard, trim after
    padded[: uneven_targets.shape[0]] = uneven_targets
    uneven_all = [torch.empty(5, 6) for _ in range(world)]
    dist.all_gather(uneven_all, padded)
    uneven_all = [uneven_all[0][:3], uneven_all[1][:5]]

    knn = knn_result(knn_model(), knn_datamodule())
    fsdp = fsdp_param_groups(Path(out_path).with_name("sharded.ckpt"))
    clipping = fsdp_clipping()
    gram = fsdp_gram_refresh()
    ema = fsdp_ema_update()

    if rank == 0:
        torch.save(
            {
                "center": centering.center,
                "centers_uneven": torch.cat(centers_uneven),
                "world": world,
                "sinkhorn": torch.cat(sinkhorn_all),
                "sinkhorn_uneven": torch.cat(uneven_all),
                **knn,
                "fsdp": fsdp,
                "fsdp_clipping": clipping,
                "fsdp_gram": gram,
                "fsdp_ema": ema,
            },
            out_path,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
