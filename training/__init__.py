"""Models, the minutes-to-threshold math, training, evaluation, the bundle and the MLflow registry."""

# one switch for library noise, for notebooks (``training.quiet_libraries()`` first) and jobs alike
from training.fanout import quiet_libraries

__all__ = ["quiet_libraries"]
