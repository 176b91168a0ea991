"""MLflow models-from-code entry point: logged beside the bundle so loading it needs no pickle."""

import mlflow

from training.registry import BundleModel

mlflow.models.set_model(BundleModel())
