from sslvit.methods.base import TeacherStudentModule
from sslvit.methods.dino import DINO
from sslvit.methods.optim_config import OptimConfig

__all__ = ["DINO", "OptimConfig", "TeacherStudentModule"]
