"""Evaluate a trained checkpoint: ``python eval.py eval=knn checkpoint=<file>`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from sslvit.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from sslvit.evaluate import evaluate
    from sslvit.utils.config_check import check_eval_config
    from sslvit.utils.config_errors import reporting_config_errors

    with reporting_config_errors():  # a configuration mistake: one line, not a traceback
        check_eval_config(cfg)
        evaluate(cfg)


if __name__ == "__main__":
    main()
