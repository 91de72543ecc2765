"""Configs read from files are data: build them only from an allow-list of our own classes.

A checkpoint, tokenizer file or feature-teacher file carries the config of the run that wrote it. Hydra's
``instantiate`` calls whatever ``_target_`` names, with whatever arguments the file holds, so a crafted
file could name ``pathlib.Path.write_text`` (or ``builtins.open``, ``shutil.copyfile``, ``torch.save``)
and write any file; ``torch.load(weights_only=True)`` does not stop that, because the config itself is
plain strings. Every place that builds an object from a stored config therefore goes through
:func:`instantiate_stored`, and the one checkpoint reader runs :func:`check_stored_config` on the parts
that are ever built, before anything runs.

Allowed: the classes a stored ``backbone`` or ``data`` config names (the backbone, data modules, datasets,
transforms, mask generators) and the tokenizer classes. Refused: any other target, Hydra's ``_args_`` and
``_partial_`` (our configs pass keyword arguments only), and ``${...}`` interpolations (a resolver is a
function call; stored configs are written resolved, so a legitimate one has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sslvit.utils.config_errors import ConfigError

# Each class under its public name and under the module that defines it (``__module__.__qualname__``).
BUILDABLE_TARGETS: frozenset[str] = frozenset(
    {
        "sslvit.backbones.MaskedViT",
        "sslvit.backbones.masked_vit.MaskedViT",
        "sslvit.data.SSLDataModule",
        "sslvit.data.datamodule.SSLDataModule",
        "sslvit.data.FashionMNIST",
        "sslvit.data.datasets.FashionMNIST",
        "sslvit.data.datasets.fashion_mnist.FashionMNIST",
        "sslvit.data.FakeDataset",
        "sslvit.data.datasets.FakeDataset",
        "sslvit.data.datasets.fake.FakeDataset",
        "sslvit.data.ImageFolderDataset",
        "sslvit.data.datasets.ImageFolderDataset",
        "sslvit.data.datasets.image_folder.ImageFolderDataset",
        "sslvit.data.eval_image_folder",
        "sslvit.data.datasets.eval_image_folder",
        "sslvit.data.datasets.image_folder.eval_image_folder",
        "sslvit.data.EvalTransform",
        "sslvit.data.MultiCropTransform",
        "sslvit.data.SingleCropTransform",
        "sslvit.data.BEiTTransform",
        "sslvit.data.transforms.EvalTransform",
        "sslvit.data.transforms.MultiCropTransform",
        "sslvit.data.transforms.SingleCropTransform",
        "sslvit.data.transforms.BEiTTransform",
        "sslvit.data.transforms.eval.EvalTransform",
        "sslvit.data.transforms.multicrop.MultiCropTransform",
        "sslvit.data.transforms.single_view.SingleCropTransform",
        "sslvit.data.transforms.single_view.BEiTTransform",
        "sslvit.data.masking.MaskGenerator",
        "sslvit.data.masking.generator.MaskGenerator",
    }
)

# Classes a tokenizer record (``sslvit_tokenizer``) may name; they are called with keyword arguments.
TOKENIZER_TARGETS: frozenset[str] = frozenset(
    {
        "sslvit.tokenizers.DVAE",
        "sslvit.tokenizers.dvae.DVAE",
        "sslvit.tokenizers.VQKD",
        "sslvit.tokenizers.vqkd.VQKD",
        "sslvit.tokenizers.DALLETokenizer",
        "sslvit.tokenizers.dalle.DALLETokenizer",
    }
)

_REFUSED_KEYS = ("_args_", "_partial_")


class UnsafeConfigError(ConfigError):
    """A stored config names something that is not on the allow-list; nothing has been built.

    A :class:`ConfigError` (a ``ValueError``): the command line reports it as one line.
    """


def check_stored_config(
    config: Any, source: str, where: str, allowed: frozenset[str] = BUILDABLE_TARGETS
) -> None:
    """Refuse a stored config (plain dicts / lists, or an OmegaConf node) that could do more than build
    allowed classes from plain values.

    Args:
        config: the stored config tree.
        source: the file and the option it came from (``checkpoint=/runs/x/last.ckpt``), for the message.
        where: the tree's place in the file (``sslvit_config.backbone``), for the message.
        allowed: the ``_target_`` strings allowed anywhere in the tree.

    Raises:
        UnsafeConfigError: one line naming the offending target, key or interpolation and the file.
    """
    if not isinstance(config, Mapping | list | tuple | str | int | float | bool | type(None)):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=False)  # keeps "${...}" visible
    _check(config, source, where, allowed)


def _check(node: Any, source: str, where: str, allowed: frozenset[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}"
            if key == "_target_":
                if not isinstance(value, str) or value not in allowed:
                    raise UnsafeConfigError(
                        f"{source} is refused: its stored config names _target_ {value!r} at {where}, "
                        "which is not one of sslvit's buildable classes; nothing was built"
                    )
            elif key in _REFUSED_KEYS:
                raise UnsafeConfigError(
                    f"{source} is refused: its stored config uses {key} at {where} (stored configs may "
                    "only give keyword arguments to sslvit's buildable classes); nothing was built"
                )
            _check(value, source, path, allowed)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            _check(value, source, f"{where}[{index}]", allowed)
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(
            f"{source} is refused: its stored config holds the interpolation {node!r} at {where} "
            "(stored configs are written resolved); nothing was built"
        )
    elif not isinstance(node, str | int | float | bool | type(None)):
        raise UnsafeConfigError(
            f"{source} is refused: its stored config holds a {type(node).__name__} at {where}, "
            "not a plain value; nothing was built"
        )


def instantiate_stored(
    config: Any, source: str, where: str, overrides: Mapping[str, Any] | None = None
) -> Any:
    """``hydra.utils.instantiate`` for a config read from a file, after :func:`check_stored_config`.

    Args:
        config: the stored config (plain containers or an OmegaConf node).
        source: the file and the option it came from, for messages.
        where: the config's place in the file (``sslvit_config.backbone``), for messages.
        overrides: values from the command line that win over the stored ones; they are the user's
            own and are not checked.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    check_stored_config(config, source, where)
    plain: Any = config if isinstance(config, Mapping) else OmegaConf.to_container(config)
    node: Any = OmegaConf.create(dict(plain))
    if overrides:
        node = OmegaConf.merge(node, overrides)
    return instantiate(node)
