"""Data-pipeline benchmark: images/s of JPEG decode, multi-crop transform, masks and collate per worker count.

    python -m benchmarks.data --folder /path/to/jpegs --workers 1,2,4,8 --batches 20
    python -m benchmarks.data --synthetic 512 --workers 1,2 --batches 10     # writes random JPEGs first
    python -m benchmarks.data --synthetic 256 --workers 0 --batches 4     # in this process: CPU ms/img too
    python -m benchmarks.data --folder ... --photometric-on-device   # workers crop + flip only; times the
                                                                      # on-device photometric stage too
    python -m benchmarks.data --folder ... --crops-on-device   # workers decode + draw boxes; crops and
                                                               # photometric ops timed on the device
    python -m benchmarks.data --folder ... --normalize-on-host  # workers send normalised float32 crops

Each run also reports the bytes of one batch and, on a GPU, the time to copy it there.

The loader is the project's own (``SSLDataModule.train_dataloader`` composed from conf/ with
``data=folder``), so decode, crops, colour augmentations, blur, solarisation, masks and collate all count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image

from benchmarks.build import CONF_DIR
from benchmarks.timing import median_ms
from sslvit.config import register_resolvers
from sslvit.data.batch import CropSourceBatch
from sslvit.data.transforms.device_crops import crop_sources
from sslvit.data.transforms.train_transform import DEVICE_STAGES


def write_synthetic_jpegs(
    folder: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0
) -> None:
    """``count`` JPEGs of ImageNet's typical size: smooth colour fields plus noise (quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:06d}.jpg", quality=90)


def build_datamodule(args: argparse.Namespace, folder: Path) -> Any:
    overrides = [
        f"method={args.method}",
        "data=folder",
        f"data.root={folder}",
        "data.labelled=false",
        f"backbone.patch_size={args.patch}",
        f"data.batch_size={args.batch}",
        f"data.transform.global_crop_size={args.global_size}",
        f"data.transform.local_crop_size={args.local_size}",
        f"data.transform.num_local_crops={args.num_local}",
        "data.persistent_workers=false",
        "data.pin_memory=null",  # pinned on a GPU machine, as in training
        f"data.transform.device_stage={args.device_stage}",
    ]
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return instantiate(cfg.data)


def time_loader(datamodule: Any, workers: int, batches: int) -> dict[str, Any]:
    """Seconds to the first batch (worker start-up), then images/s over the next ``batches`` batches.

    With 0 workers the images load in this process, so its CPU time per image is also reported: the
    pipeline's cost per image on one core, which other jobs on the machine hardly change (they change
    images/s a lot).
    """
    datamodule.num_workers, datamodule.persistent_workers = workers, False
    start = time.perf_counter()
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    first, cpu_first = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a small folder: start another epoch
            iterator = iter(datamodule.train_dataloader())
            batch = next(iterator)
        images += batch.batch_size
    elapsed, cpu = time.perf_counter() - first, time.process_time() - cpu_first
    return {
        "workers": workers,
        "first_batch_s": first - start,
        "images": images,
        "img_per_s": images / elapsed,
        "cpu_ms_per_img": cpu / images * 1e3 if workers == 0 else None,
    }


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor of a batch dataclass (list fields flattened)."""
    out: list[torch.Tensor] = []
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        out += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, torch.Tensor)]
    return out


def time_transfer(batch: Any, repeats: int = 10) -> dict[str, Any]:
    """MB of one loader batch, and on CUDA the median ms to copy it there from pinned memory with
    ``non_blocking`` (as Lightning does with ``pin_memory``). uint8 crops are also timed as float32, which
    is what the workers hand over when they normalise (``device_stage=none``)."""
    tensors = batch_tensors(batch)
    crops = [t for t in tensors if t.dtype == torch.uint8 and t.ndim == 4]
    nbytes = sum(t.nbytes for t in tensors)
    row: dict[str, Any] = {"mb_per_batch": nbytes / 1e6, "copy_ms": None}
    if crops:  # float32 crops take 4 bytes a value instead of 1
        row["mb_per_batch_float32_crops"] = (nbytes + 3 * sum(c.numel() for c in crops)) / 1e6
        row["copy_ms_float32_crops"] = None
    if not torch.cuda.is_available():
        return row
    device = torch.device("cuda")
    groups = {"copy_ms": tensors}
    if crops:
        groups["copy_ms_float32_crops"] = [t for t in tensors if not any(t is c for c in crops)]
        groups["copy_ms_float32_crops"] += [c.float() for c in crops]
    for key, group in groups.items():
        pinned = [t.pin_memory() for t in group]
        row[key] = median_ms(
            lambda p=pinned: [t.to(device, non_blocking=True) for t in p], "cuda", repeats, 2
        )
    return row


def time_device_ops(datamodule: Any, loaded: Any, repeats: int = 10) -> dict[str, Any]:
    """Median ms of what runs on the device for the ``loaded`` batch (crops if they are cut there,
    photometric ops, the normalisation), on CUDA if present, else the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = move_data_to_device(loaded, device)
    device_ops = datamodule.transform.device_ops

    def run() -> None:
        crops = crop_sources(batch) if isinstance(batch, CropSourceBatch) else batch
        device_ops(crops.global_crops, crops.local_crops)

    ms = median_ms(run, device.type, repeats, warmup=2)
    return {"device": device.type, "ms_per_batch": ms, "img_per_s": batch.batch_size / (ms / 1e3)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=None, help="JPEG folder (any layout, no labels needed)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="first write N random JPEGs")
    p.add_argument("--synthetic-size", default="500x375", metavar="WxH", help="their size (ImageNet-like)")
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated DataLoader worker counts")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--method", default="dinov2", choices=["dino", "ibot", "dinov2"], help="selects masks")
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=98)
    p.add_argument("--num-local", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--device-stage",
        default="normalize",
        choices=DEVICE_STAGES,
        help="data.transform.device_stage: what runs per batch on the device (timed) instead of in the "
        "workers; none = normalised float32 crops from the workers",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        raise SystemExit(f"--workers must be comma-separated integers, got {args.workers!r}") from None
    parts = args.synthetic_size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"--synthetic-size must be WxH, got {args.synthetic_size!r}")
    size = (int(parts[0]), int(parts[1]))
    if args.folder is None and not args.synthetic:
        raise SystemExit("give --folder <jpeg dir>, --synthetic N, or both (N JPEGs written into --folder)")
    with tempfile.TemporaryDirectory(prefix="sslvit_bench_jpegs_") as tmp:
        folder = args.folder or Path(tmp)
        if args.synthetic:
            write_synthetic_jpegs(folder, args.synthetic, size)
        datamodule = build_datamodule(args, folder)
        rows = [time_loader(datamodule, w, args.batches) for w in workers]
        datamodule.num_workers = 0
        loaded = next(iter(datamodule.train_dataloader()))  # one batch for the copy and the device stage
        transfer = time_transfer(loaded)
        has_ops = datamodule.transform.device_ops is not None
        device_ops = time_device_ops(datamodule, loaded) if has_ops else None
    report = {
        "folder": f"{args.synthetic} synthetic {args.synthetic_size} JPEGs"
        if args.synthetic
        else str(args.folder),
        "images_in_folder": len(datamodule.train_set),
        "batch": args.batch,
        "method": args.method,
        "crops": f"2x{args.global_size} + {args.num_local}x{args.local_size}",
        "device_stage": args.device_stage,
        "rows": rows,
        "transfer": transfer,
        "device_ops": device_ops,
    }
    print(f"{report['folder']}: batch {args.batch}, {report['crops']}, masks of {args.method}")
    print("| workers | first batch s | img/s | CPU ms/img |\n|---|---|---|---|")
    for r in rows:
        cpu = "" if r["cpu_ms_per_img"] is None else f"{r['cpu_ms_per_img']:.1f}"
        print(f"| {r['workers']} | {r['first_batch_s']:.2f} | {r['img_per_s']:.1f} | {cpu} |")
    copy = "" if transfer["copy_ms"] is None else f", copied to the GPU in {transfer['copy_ms']:.2f} ms"
    print(f"one batch: {transfer['mb_per_batch']:.1f} MB{copy}")
    if "mb_per_batch_float32_crops" in transfer:
        copy = transfer["copy_ms_float32_crops"]
        copy_text = "" if copy is None else f", {copy:.2f} ms"
        print(f"  (with float32 crops: {transfer['mb_per_batch_float32_crops']:.1f} MB{copy_text})")
    if device_ops is not None:
        print(
            f"device stage on {device_ops['device']}: {device_ops['ms_per_batch']:.1f} ms per batch "
            f"({device_ops['img_per_s']:.0f} img/s)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
