"""Models as data: what trainers in any framework (or language) build. Standard library only."""

from models.locate import locate
from models.spec import ARCHS, ModelSpec, TaskKind

__all__ = ["ARCHS", "ModelSpec", "TaskKind", "locate"]
