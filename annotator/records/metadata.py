"""The run metadata: what every part's footer (Parquet key ``annotator``) says about the
run that wrote it, typed. The processor adds its shard's keys (:data:`SHARD_KEYS`); the
reducer drops them again for the merged file, ``coco.json`` and the report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SHARD_KEYS", "RunMetadata"]

#: Keys a shard processor adds to its part's footer (not part of the run's metadata):
#: ``precision`` is what its encoders really ran at (``--precision auto`` resolves per
#: machine, so a run resumed on another CPU kind may differ between parts).
SHARD_KEYS = ("shard_index", "confusion", "gt_errors", "precision")


@dataclass(frozen=True)
class RunMetadata:
    """One run's settings as recorded with its output.

    ``vocabulary``: class names, index 0 ``background``; ``pretrained``: what was loaded
    for CLIP (the tag, ``random (seed N)``, ``none``, or ``name sha256:<hex>``), and
    ``weights`` the same per weight (``clip``, ``dino``, ``found``); ``source``: the
    source as shown (credentials removed); ``num_images``/``num_shards``: the listing.
    """

    vocabulary: list[str]
    vocabulary_prompts: list[dict] = field(default_factory=list)
    model: str = ""
    pretrained: str = ""
    weights: dict[str, str] = field(default_factory=dict)
    saliency: str = ""
    protocol: str = ""
    templates: list[str] = field(default_factory=list)
    version: str = ""
    config_hash: str = ""
    source: str = ""
    num_images: int | None = None
    num_shards: int | None = None

    def __post_init__(self) -> None:
        names = self.vocabulary
        if not isinstance(names, list) or not names or names[0] != "background" or \
                not all(isinstance(n, str) for n in names):
            raise ValueError(f"RunMetadata.vocabulary: expected a list of class names with index 0 = "
                             f"'background', got {names!r:.200}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunMetadata:
        """From a footer's JSON: the shard's own keys and unknown keys are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})
