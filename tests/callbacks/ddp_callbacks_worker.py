"""Run by ``torch.distributed.run`` with 2 CPU processes (gloo) from test_callbacks_ddp.py.

Each rank (1) extracts features from its DistributedSampler shard of a 7-sample set (the sampler pads
it to 8), (2) takes one online-probe step on its own half of a global batch, and (3) runs the raw-pixel
k-NN with that set as the bank and 41 queries, both sharded. Every rank saves what it got; the test
compares it with one process holding the whole data.
"""

import sys
import warnings

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sslvit.callbacks import LinearProbe, extract_features
from sslvit.data.batch import MultiCropBatch
from sslvit.eval.pixel_knn import pixel_knn_accuracy

DIM, CLASSES = 4, 3


class Identity(pl.LightningModule):
    embed_dim = DIM

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def eval_set() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, DIM, 1, 1, generator=g), torch.randint(0, CLASSES, (7,), generator=g)


def pixel_sets() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Bank: the 7 eval images with balanced labels; queries: noisy copies of them, every 5th mislabelled.
    With T = 1 a bank sample counted twice (the sampler's padding) changes the votes."""
    images, _ = eval_set()
    bank_labels = torch.arange(7) % CLASSES
    g = torch.Generator().manual_seed(2)
    queries = images[torch.arange(41) % 7] + 0.8 * torch.randn(41, DIM, 1, 1, generator=g)
    query_labels = bank_labels[torch.arange(41) % 7]
    query_labels[::5] = (query_labels[::5] + 1) % CLASSES
    return (images, bank_labels), (queries, query_labels)


def pixel_floor(bank: DataLoader, queries: DataLoader) -> dict[str, dict[int, float]]:
    return pixel_knn_accuracy(bank, queries, CLASSES, ks=(2, 3, 7), temperature=1.0, chunk_size=16)


def probe_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch of 8 (rank r holds rows 4r..4r+3); row 5 is unlabelled."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, CLASSES, (8,), generator=g)
    labels[5] = -1
    return torch.randn(8, DIM, generator=g), labels


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    images, labels = eval_set()
    dataset = TensorDataset(images, labels, torch.arange(7))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    features, feature_labels = extract_features(
        Identity(), DataLoader(dataset, batch_size=2, sampler=sampler)
    )

    (bank_images, bank_labels), (query_images, query_labels) = pixel_sets()
    bank_set = TensorDataset(bank_images, bank_labels, torch.arange(7))
    query_set = TensorDataset(query_images, query_labels, torch.arange(41))
    pixels = pixel_floor(
        DataLoader(bank_set, batch_size=2, sampler=DistributedSampler(bank_set, shuffle=False)),
        DataLoader(query_set, batch_size=8, sampler=DistributedSampler(query_set, shuffle=False)),
    )

    probe = LinearProbe(lr=0.1)
    probe._enabled = True
    probe._build(DIM, CLASSES, torch.device("cpu"))
    feats, targets = probe_batch()
    local = slice(4 * rank, 4 * rank + 4)
    batch = MultiCropBatch(global_crops=[feats[local, :, None, None]], local_crops=[], labels=targets[local])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pl_module.log without a Trainer
        probe.on_train_batch_end(None, Identity(), {"features": feats[local]}, batch, 0)  # type: ignore[arg-type]

    torch.save(
        {
            "features": features,
            "labels": feature_labels,
            "probe": probe.probe.state_dict(),
            "world": world,
            "pixels": pixels,
        },
        f"{out_dir}/rank{rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
