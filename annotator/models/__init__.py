"""Model backends: CLIP encoders and saliency methods, built by name from
:mod:`annotator.models.registry` (the one place that lists them, as data)."""

from annotator.models.registry import (
    CLIP_BACKENDS,
    SALIENCY_BACKENDS,
    ResolvedWeights,
    build_clip,
    build_saliency,
    check_saliency_name,
    describe_weights,
    resolve_weights,
)

__all__ = [
    "CLIP_BACKENDS",
    "SALIENCY_BACKENDS",
    "ResolvedWeights",
    "build_clip",
    "build_saliency",
    "check_saliency_name",
    "describe_weights",
    "resolve_weights",
]
