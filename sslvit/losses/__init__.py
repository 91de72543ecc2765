from sslvit.losses.centering import Centering
from sslvit.losses.dino import DINOLoss
from sslvit.losses.gram import GramLoss
from sslvit.losses.ibot_patch import IBOTPatchLoss
from sslvit.losses.koleo import KoLeoLoss
from sslvit.losses.mim import MIMCrossEntropy
from sslvit.losses.sinkhorn_knopp import SinkhornKnopp

__all__ = [
    "Centering",
    "DINOLoss",
    "GramLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MIMCrossEntropy",
    "SinkhornKnopp",
]
