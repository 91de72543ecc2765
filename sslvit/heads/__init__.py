from sslvit.heads.dino_head import DINOHead

__all__ = ["DINOHead"]
