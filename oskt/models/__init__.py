"""Width-parametrised ReID models: the OSKT ResNet-50 series and the TransReID/PASS-style ViT family."""

from oskt.models.factory import MODELS, ReIDModel, ReIDOutput, build_model, count_params
from oskt.models.io import load_model, save_model
from oskt.models.pretrained import load_pretrained
from oskt.models.spec import ModelSpec, parse_spec, select_chain

__all__ = [
    "MODELS",
    "ModelSpec",
    "ReIDModel",
    "ReIDOutput",
    "build_model",
    "count_params",
    "load_model",
    "load_pretrained",
    "parse_spec",
    "save_model",
    "select_chain",
]
