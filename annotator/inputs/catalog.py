"""The listing's records: :class:`ImageRef`, one listed image, and :class:`ImageRefs`,
a whole listing held as columns (see its docstring for the layout)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["ImageRef", "ImageRefs", "ImageRefsBuilder"]


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


# ---------------------------------------------------------------- the compact listing

def _encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")  # a non-UTF-8 file name survives the round trip


def _decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class ImageRefs(Sequence[ImageRef]):
    """A listing held as columns, so that a million names cost tens of MiB, not a GiB of
    ``ImageRef`` objects; a ``Sequence[ImageRef]`` whose items are made when asked for.

    Columns (N = ``len(self)``):

    - ``image_id``: (N,) int64;
    - the file names: one Arrow ``large_binary`` array, UTF-8 (``surrogateescape``, so a
      file name that is not UTF-8 comes back unchanged);
    - ``index``: (N,) int64 Hugging Face row indices (-1: none), or None;
    - the uris: ``uri_prefix + file_name`` (or ``uri_prefix + str(index)`` when
      ``uri_from_index``), except the positions in ``overrides`` (position -> uri).

    ``refs[a:b]`` is another ImageRefs sharing the buffers (a shard's view). Pickled (to a
    Ray actor, say) it becomes a plain ``list`` of its refs: what crosses a process
    boundary is a shard, never the whole listing by accident of a view's buffers.
    """

    __slots__ = ("_ids", "_names", "_indices", "_uri_prefix", "_uri_from_index", "_overrides")

    def __init__(self, ids: np.ndarray, names: pa.Array, *, uri_prefix: str = "", uri_from_index: bool = False,
                 overrides: dict[int, str] | None = None, indices: np.ndarray | None = None):
        if len(ids) != len(names) or (indices is not None and len(indices) != len(ids)):
            raise ValueError(f"ImageRefs: expected columns of one length, got ids {len(ids)}, names {len(names)}"
                             + ("" if indices is None else f", indices {len(indices)}"))
        self._ids = ids
        self._names = names
        self._indices = indices
        self._uri_prefix = uri_prefix
        self._uri_from_index = uri_from_index
        self._overrides = overrides or {}

    @classmethod
    def from_refs(cls, refs: Iterable[ImageRef]) -> ImageRefs:
        """The refs as given (order and ids kept)."""
        builder = ImageRefsBuilder()
        for ref in refs:
            builder.add(ref.file_name, ref.uri, image_id=ref.image_id, index=ref.index)
        return builder.build()

    # ------------------------------------------------------------ Sequence
    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, key: int) -> ImageRef: ...
    @overload
    def __getitem__(self, key: slice) -> ImageRefs: ...

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return ImageRefs.from_refs(self[k] for k in range(start, stop, step))
            stop = max(start, stop)
            return ImageRefs(
                self._ids[start:stop], self._names.slice(start, stop - start), uri_prefix=self._uri_prefix,
                uri_from_index=self._uri_from_index, indices=None if self._indices is None else self._indices[start:stop],
                overrides={k - start: v for k, v in self._overrides.items() if start <= k < stop},
            )
        k = int(key)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"ImageRefs index {key} out of range for {len(self)} refs")
        return self._ref(k, _decode_name(self._names[k].as_py()))

    def __iter__(self) -> Iterator[ImageRef]:
        for start, names in self._name_chunks():
            for j, name in enumerate(names):
                yield self._ref(start + j, name)

    def file_names(self) -> Iterator[str]:
        """The file names in order (without making the refs)."""
        for _, names in self._name_chunks():
            yield from names

    def __reduce__(self):
        return (list, (list(self),))

    def __repr__(self) -> str:
        return f"ImageRefs({len(self)} refs)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking like a list: not hashable

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the names' buffers as sliced)."""
        return (self._ids.nbytes + self._names.nbytes + (0 if self._indices is None else self._indices.nbytes)
                + sum(len(v) for v in self._overrides.values()))

    # ------------------------------------------------------------ internals
    _CHUNK = 8192

    def _name_chunks(self) -> Iterator[tuple[int, list[str]]]:
        for start in range(0, len(self), self._CHUNK):
            raw = self._names.slice(start, self._CHUNK).to_pylist()
            yield start, [_decode_name(b) for b in raw]

    def _ref(self, k: int, name: str) -> ImageRef:
        index = None
        if self._indices is not None and self._indices[k] >= 0:
            index = int(self._indices[k])
        uri = self._overrides.get(k)
        if uri is None:
            uri = self._uri_prefix + (str(index) if self._uri_from_index else name)
        return ImageRef(image_id=int(self._ids[k]), file_name=name, uri=uri, index=index)


class ImageRefsBuilder:
    """Collects refs one at a time into :class:`ImageRefs` columns, holding at most
    ``chunk`` of them as Python objects: listing a million files never holds a million
    ``ImageRef`` (or path string) objects at once.

    ``add`` with ``image_id=None`` leaves the ids to :meth:`build` (1-based positions in
    the final order); give all ids or none.
    """

    def __init__(self, chunk: int = 65536):
        self._chunk = chunk
        self._names: list[bytes] = []
        self._ids: list[int] = []
        self._indices: list[int] = []
        self._name_chunks: list[pa.Array] = []
        self._id_chunks: list[np.ndarray] = []
        self._index_chunks: list[np.ndarray] = []
        self._overrides: dict[int, str] = {}
        self._count = 0
        self._prefix: str | None = None
        self._from_index = False
        self._any_index = False
        self._ids_given: bool | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, file_name: str, uri: str, *, image_id: int | None = None, index: int | None = None) -> None:
        if not file_name:
            raise ValueError("ImageRef.file_name: expected a non-empty relative path, received ''")
        if self._ids_given is None:
            self._ids_given = image_id is not None
        elif self._ids_given != (image_id is not None):
            raise ValueError("ImageRefsBuilder.add: give every ref an image_id or none")
        if self._prefix is None:  # the first ref decides how uris are derived
            if index is not None and uri.endswith("/" + str(index)):
                self._prefix, self._from_index = uri[: len(uri) - len(str(index))], True
            elif uri.endswith(file_name):
                self._prefix = uri[: len(uri) - len(file_name)]
            else:
                self._prefix = ""
        suffix = str(index) if self._from_index and index is not None else file_name
        if uri != self._prefix + suffix or (self._from_index and index is None):
            self._overrides[self._count] = uri
        self._names.append(_encode_name(file_name))
        self._ids.append(0 if image_id is None else image_id)
        self._indices.append(-1 if index is None else index)
        self._any_index |= index is not None
        self._count += 1
        if len(self._names) >= self._chunk:
            self._flush()

    def _flush(self) -> None:
        if self._names:
            self._name_chunks.append(pa.array(self._names, type=pa.large_binary()))
            self._id_chunks.append(np.asarray(self._ids, dtype=np.int64))
            self._index_chunks.append(np.asarray(self._indices, dtype=np.int64))
            self._names, self._ids, self._indices = [], [], []

    def build(self, *, sort_by_name: bool = False) -> ImageRefs:
        """The columns; ``sort_by_name``: ordered by file name (byte order of the UTF-8
        names, which is code point order), duplicates kept."""
        self._flush()
        names = (pa.chunked_array(self._name_chunks, type=pa.large_binary()).combine_chunks()
                 if self._name_chunks else pa.array([], type=pa.large_binary()))
        self._name_chunks = []
        ids = np.concatenate(self._id_chunks) if self._id_chunks else np.zeros(0, np.int64)
        indices = np.concatenate(self._index_chunks) if self._index_chunks and self._any_index else None
        overrides = self._overrides
        if sort_by_name and len(names) > 1:
            order = pc.array_sort_indices(names)
            names = names.take(order)
            order_np = order.to_numpy()
            ids = ids[order_np]
            if indices is not None:
                indices = indices[order_np]
            if overrides:
                new_pos = np.empty(len(order_np), dtype=np.int64)
                new_pos[order_np] = np.arange(len(order_np))
                overrides = {int(new_pos[k]): v for k, v in overrides.items()}
        if not self._ids_given:
            ids = np.arange(1, len(names) + 1, dtype=np.int64)
        return ImageRefs(ids, names, uri_prefix=self._prefix or "", uri_from_index=self._from_index,
                         overrides=overrides, indices=indices)
