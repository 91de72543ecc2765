from sslvit.methods.base import TeacherStudentModule
from sslvit.methods.dino import DINO
from sslvit.methods.dinov2 import DINOv2
from sslvit.methods.ibot import IBOT
from sslvit.methods.optim_config import OptimConfig

__all__ = ["DINO", "IBOT", "DINOv2", "OptimConfig", "TeacherStudentModule"]
