"""Source models: find, validate and load the ANN diffusion UNets that get converted."""

from sdm.pretrained.loading import SourceModel, SourceModelError, load_source_model

__all__ = ["SourceModel", "SourceModelError", "load_source_model"]
