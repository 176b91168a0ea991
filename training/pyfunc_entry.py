"""MLflow models-from-code entry point: logged beside the bundle so loading it needs no pickle."""

import mlflow

from training.mlflow_model import BundleModel

mlflow.models.set_model(BundleModel())
