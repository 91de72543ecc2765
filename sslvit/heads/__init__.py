from sslvit.heads.cls_pretrain_head import CLSPretrainHead
from sslvit.heads.dino_head import DINOHead
from sslvit.heads.global_batch_norm import GlobalBatchNorm1d
from sslvit.heads.mim_classifier import mim_classifier

__all__ = ["CLSPretrainHead", "DINOHead", "GlobalBatchNorm1d", "mim_classifier"]
