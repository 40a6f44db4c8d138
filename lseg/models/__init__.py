"""LSeg model: ``build_model(cfg.model)``, ``load_model(path)``; see README.md, "The model"."""
from lseg.models.loading import load_model
from lseg.models.lseg import LSeg, LSegImage, SpatialRegularizer, build_model
from lseg.models.text import TextEncoder
from lseg.models.weights import WeightsError

__all__ = ["LSeg", "LSegImage", "SpatialRegularizer", "TextEncoder", "WeightsError", "build_model", "load_model"]
