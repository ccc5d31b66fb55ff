"""Entry file of the logged MLflow model ("models from code"): MLflow runs it to build the model."""

from mlflow.models import set_model

from glint_track.inference.serving import GlintPyfunc

set_model(GlintPyfunc())
