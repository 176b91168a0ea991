"""Models, the minutes-to-threshold math, training, evaluation, the bundle and the MLflow registry."""
