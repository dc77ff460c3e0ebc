"""The attention layer and its parts: encodings (scores), geometry (which tokens), mixing (how applied)."""

from .encodings import ENCODINGS, GeneralizedEncoding, LearnedEncoding, QuadraticEncoding, check_alpha, width_of
from .geometry import PADDING_MODES, Axis, Geometry
from .layer import RelativeSelfAttention

__all__ = ["ENCODINGS", "PADDING_MODES", "Axis", "Geometry", "GeneralizedEncoding", "LearnedEncoding",
           "QuadraticEncoding", "RelativeSelfAttention", "check_alpha", "width_of"]
