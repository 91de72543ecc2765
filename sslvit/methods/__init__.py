from sslvit.methods.base import PretrainingModule
from sslvit.methods.beit import BEiT
from sslvit.methods.beitv2 import BEiTv2
from sslvit.methods.dino import DINO
from sslvit.methods.dinov2 import DINOv2
from sslvit.methods.distill import Distillation
from sslvit.methods.dvae import DVAETraining
from sslvit.methods.ema_teacher import EMATeacher
from sslvit.methods.gram_teacher import GramConfig, GramTeacher
from sslvit.methods.ibot import IBOT
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.vit_pretraining import ViTPretrainingModule
from sslvit.methods.vqkd import VQKDTraining

__all__ = [
    "DINO",
    "IBOT",
    "BEiT",
    "BEiTv2",
    "DINOv2",
    "DVAETraining",
    "Distillation",
    "EMATeacher",
    "GramConfig",
    "GramTeacher",
    "OptimConfig",
    "PretrainingModule",
    "VQKDTraining",
    "ViTPretrainingModule",
]
