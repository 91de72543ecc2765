"""A transform's defaults live in one place: every value conf/data/transform/<name>.yaml sets is the
class's own default, so a transform built in Python and one composed from the YAML are the same."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class
from toys import CONF_DIR

from sslvit.data.transforms import DEVICE_STAGES, MultiCropTransform, TrainTransform

TRANSFORM_CONFIGS = sorted((Path(CONF_DIR) / "data" / "transform").glob("*.yaml"))


def _plain(value: object) -> object:
    """Lists and tuples alike (YAML has no tuples)."""
    return list(value) if isinstance(value, list | tuple) else value


@pytest.mark.parametrize("path", TRANSFORM_CONFIGS, ids=lambda p: p.stem)
def test_yaml_values_are_the_class_defaults(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    cls = get_class(config.pop("_target_"))
    assert issubclass(cls, TrainTransform)
    defaults = {
        name: param.default
        for name, param in inspect.signature(cls).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    # Interpolations (`${backbone.patch_size}`) are another config's value, not this file's.
    literal = {k: v for k, v in config.items() if not (isinstance(v, str) and v.startswith("${"))}
    assert literal, path
    differing = {
        k: (v, defaults.get(k, "<no default>"))
        for k, v in literal.items()
        if _plain(v) != _plain(defaults.get(k, "<no default>"))
    }
    assert not differing, f"{path.name} (yaml, code): {differing}"
    cls()  # the defaults alone build the transform


def test_device_stage_is_one_checked_setting() -> None:
    assert DEVICE_STAGES == ("none", "normalize", "photometric", "crops")
    with pytest.raises(ValueError, match=r"device_stage must be one of none, normalize, photometric, crops"):
        MultiCropTransform(device_stage="gpu")
