from sslvit.losses.centering import Centering
from sslvit.losses.dino import DINOLoss

__all__ = ["Centering", "DINOLoss"]
