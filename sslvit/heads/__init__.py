from sslvit.heads.cls_pretrain_head import CLSPretrainHead
from sslvit.heads.dino_head import DINOHead

__all__ = ["CLSPretrainHead", "DINOHead"]
