"""Defaults written in code equal the config files that set the same keys, so the two cannot drift."""

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from toys import CONF_DIR

from sslvit.methods import GramConfig, OptimConfig


def test_optim_config_defaults_are_conf_optim_adamw() -> None:
    conf = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "optim" / "adamw.yaml"), resolve=False)
    assert isinstance(conf, dict)
    conf.pop("_target_")
    conf.pop("batch_size_per_device")  # read from the data config in a run
    code = {f.name: f.default for f in fields(OptimConfig) if f.name != "batch_size_per_device"}
    code["betas"] = list(code["betas"])
    assert conf == code


METHOD_FILES = sorted((Path(CONF_DIR) / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_method_defaults_are_conf_method(path: Path) -> None:
    """Every plain value a method file sets equals the default of its class's argument."""
    conf = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(conf, dict)
    method = conf["method"]
    signature = inspect.signature(get_class(method["_target_"]))
    differing = {}
    for key, value in method.items():
        if (
            key.startswith("_")
            or isinstance(value, dict | list)
            or (isinstance(value, str) and "${" in value)
        ):
            continue  # Hydra's keys, groups (optim) and interpolations
        default = signature.parameters[key].default
        if default is inspect.Parameter.empty or default != value:
            differing[key] = (value, default)
    assert not differing, f"{path.name} (yaml, code): {differing}"


def test_gram_config_defaults_are_conf_method_dinov2_gram() -> None:
    method = OmegaConf.load(Path(CONF_DIR) / "method" / "dinov2.yaml").method
    conf = OmegaConf.to_container(method.gram, resolve=False)
    assert isinstance(conf, dict)
    assert conf.pop("_target_") == "sslvit.methods.GramConfig"
    assert conf == {f.name: f.default for f in fields(GramConfig)}
