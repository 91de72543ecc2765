"""Per-channel pixel mean and std of a data config's training images, for ``data.transform.mean / std``.

    python -m sslvit.data.stats data=folder data.root=/data/bands data.in_chans=5 [samples=1000]
        [seed=0] [out=conf/data/my_bands.yaml]

Every argument but ``samples``, ``seed`` and ``out`` is a Hydra override of ``conf/config.yaml``, as for
``train.py``, so the images are read exactly as training reads them (channel count, array scaling) and
measured in [0, 1], before any augmentation. ``samples`` images are drawn at random (seeded; ``null``:
all of them); every pixel weighs the same. The result is printed as override lines; with ``out`` it is
also written as a data config that extends the chosen one with the command's ``data.*`` overrides and
the statistics (``python train.py data=my_bands`` when ``out`` is in ``conf/data/``).
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sslvit.data.transforms.channel_ops import to_unit_tensor

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_OWN_DEFAULTS: dict[str, Any] = {"samples": 1000, "seed": 0, "out": None}


def channel_stats(
    dataset: Any, samples: int | None = 1000, seed: int = 0
) -> tuple[list[float], list[float], int, int]:
    """``(mean, std, images used, unreadable images skipped)`` per channel over ``samples`` random images.

    Images are ``(C, H, W)`` in [0, 1] (PIL pictures through ``ToTensor``); the statistics are those of
    all their pixels together (population std), accumulated in float64.
    """
    count = len(dataset)
    if samples is None or samples >= count:
        indices = list(range(count))
    else:
        indices = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[
            : int(samples)
        ].tolist()
    sums: list[torch.Tensor] = []  # per image: (C,) sums of values and of squares, in float64
    squares: list[torch.Tensor] = []
    pixels, skipped = 0, 0
    for index in indices:
        sample = dataset[index]
        if sample is None:  # an unreadable file, as training would skip it
            skipped += 1
            continue
        x = to_unit_tensor(sample[0]).double()  # (C, H, W)
        sums.append(x.sum(dim=(1, 2)))
        squares.append((x * x).sum(dim=(1, 2)))
        pixels += x.shape[1] * x.shape[2]
    if not sums:
        raise ValueError(f"none of the {len(indices)} images drawn could be read")
    mean = torch.stack(sums).sum(0) / pixels
    std = (torch.stack(squares).sum(0) / pixels - mean * mean).clamp_min(0.0).sqrt()
    return mean.tolist(), std.tolist(), len(sums), skipped


def _split_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    own, overrides = dict(_OWN_DEFAULTS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in own:
            own[key] = None if value in ("null", "None", "") else (value if key == "out" else int(value))
        else:
            overrides.append(arg)
    return own, overrides


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``train.py`` composes it (Hydra's own node included)."""
    from hydra import compose, initialize_config_dir

    from sslvit.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def data_config_text(
    cfg: DictConfig, overrides: Sequence[str], mean: list[float], std: list[float], note: str
) -> str:
    """A data config extending the composed one: its choice, the ``data.*`` overrides, the statistics."""
    out: dict[str, Any] = {"defaults": [str(cfg.hydra.runtime.choices["data"]), "_self_"]}
    body = OmegaConf.create(out)
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith("data.") and key not in ("data.transform.mean", "data.transform.std"):
            OmegaConf.update(body, key[len("data.") :], OmegaConf.select(cfg, key), force_add=True)
    OmegaConf.update(body, "transform.mean", [round(m, 4) for m in mean], force_add=True)
    OmegaConf.update(body, "transform.std", [round(s, 4) for s in std], force_add=True)
    return f"# {note}\n" + OmegaConf.to_yaml(body)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hydra.utils import instantiate

    args = list(sys.argv[1:] if argv is None else argv)
    own, overrides = _split_args(args)
    cfg = compose_config(overrides)
    dataset = instantiate(cfg.data.train_set)
    mean, std, used, skipped = channel_stats(dataset, own["samples"], own["seed"])
    if any(not math.isfinite(v) for v in mean + std):
        raise ValueError("the statistics are not finite; check data.scale")
    line = f"data.transform.mean=[{','.join(f'{m:.4f}' for m in mean)}] "
    line += f"data.transform.std=[{','.join(f'{s:.4f}' for s in std)}]"
    note = f"{used} images of {dataset!r}" + (f" ({skipped} unreadable, skipped)" if skipped else "")
    print(f"per-channel mean / std in [0, 1] of {note}:\n{line}")
    if own["out"]:
        path = Path(own["out"])
        extended = str(cfg.hydra.runtime.choices["data"])
        if path.stem == extended and path.parent.resolve() == (CONF_DIR / "data").resolve():
            raise ValueError(
                f"out={path} would replace the data config it extends ({extended}); choose another name"
            )
        command = "python -m sslvit.data.stats " + " ".join(shlex.quote(a) for a in args)
        text = data_config_text(cfg, overrides, mean, std, f"Written by `{command}`: {note}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        use = f"; use it with data={path.stem}" if path.parent.name == "data" else ""
        print(f"wrote {path}{use}")
    return {"mean": mean, "std": std, "images": used, "skipped": skipped}


if __name__ == "__main__":
    main()
