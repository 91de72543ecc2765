"""Defaults written in code equal the config files that set the same keys, so the two cannot drift."""

from dataclasses import fields
from pathlib import Path

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


def test_gram_config_defaults_are_conf_method_dinov2_gram() -> None:
    method = OmegaConf.load(Path(CONF_DIR) / "method" / "dinov2.yaml").method
    conf = OmegaConf.to_container(method.gram, resolve=False)
    assert isinstance(conf, dict)
    assert conf.pop("_target_") == "sslvit.methods.GramConfig"
    assert conf == {f.name: f.default for f in fields(GramConfig)}
