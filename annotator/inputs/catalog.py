"""The listing's records: :class:`ImageRef`, one listed image."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageRef"]


@dataclass(frozen=True)
class ImageRef:
    """One listed image.

    image_id: 1-based position in the sorted listing (stable for a given source).
    file_name: path relative to the source root, '/'-separated; "{index:08d}.{ext}" for
        a Hugging Face row.
    uri: what :func:`read_image_bytes` opens (credentials removed): a local absolute path,
        an fsspec URL, or "hf://{name}/{split}/{index}" (read via HFSource.read_rows).
    index: row index for a Hugging Face dataset, else None.
    """

    image_id: int
    file_name: str
    uri: str
    index: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_id, int) or self.image_id < 1:
            raise ValueError(f"ImageRef.image_id: expected an int >= 1, received {self.image_id!r}")
        if not self.file_name:
            raise ValueError("ImageRef.file_name: expected a non-empty relative path, received ''")
