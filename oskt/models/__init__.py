"""Width-parametrised ReID models: the OSKT ResNet-50 series and the TransReID/PASS-style ViT family."""

from oskt.models.spec import ModelSpec, parse_spec, select_chain

__all__ = ["ModelSpec", "parse_spec", "select_chain"]
