"""Pretrain a ViT: ``python train.py [group=option ...] [key=value ...]`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from sslvit.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from sslvit.train import train  # imported here so `--cfg job` / `--help` stay fast
    from sslvit.utils.config_errors import reporting_config_errors

    with reporting_config_errors():  # a configuration mistake: one line, not a traceback
        summary = train(cfg)
    # Returned for sweepers that optimise a metric (e.g. Optuna).
    return summary["metrics"].get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
