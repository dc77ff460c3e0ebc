"""The attention layer and its parts: encodings (scores), geometry (which tokens), and how the probabilities
are applied and the heads merged: positional_merge (with product_merge, dense_merge and axis_passes), shifts
(hard-limit heads), content (content scores); gemm picks the CPU GEMMs."""

from .encodings import ENCODINGS, GeneralizedEncoding, LearnedEncoding, QuadraticEncoding, check_alpha, width_of
from .geometry import PADDING_MODES, Axis, Geometry
from .layer import RelativeSelfAttention

__all__ = ["ENCODINGS", "PADDING_MODES", "Axis", "Geometry", "GeneralizedEncoding", "LearnedEncoding",
           "QuadraticEncoding", "RelativeSelfAttention", "check_alpha", "width_of"]
