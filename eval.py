"""Evaluate a trained checkpoint: ``python eval.py eval=knn checkpoint=<file>`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from sslvit.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from sslvit.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
