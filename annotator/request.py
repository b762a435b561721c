"""What a run is asked to do, as one typed, frozen, validated object.

:class:`RunRequest` gathers four parts, each a frozen dataclass checked in its
``__post_init__`` (a :class:`~annotator.config.ConfigError` naming what was expected and
what was received):

- :class:`ReadSpec`: what to read (a source or a Hugging Face dataset, an image list,
  the byte and pixel caps, the ground truth);
- :class:`ModelSpec`: what to run (the :class:`~annotator.config.EngineConfig` and the
  vocabulary file);
- :class:`WriteSpec`: where to write (the output folder or URL, overwrite, the report);
- :class:`ScheduleSpec`: how to schedule (shard size, actors, Ray address, the failure
  rate that fails the run, the progress bar).

The command line builds one in a single place, :meth:`RunRequest.from_args`; a notebook
or another tool builds it directly and hands it to :func:`annotator.run_job`::

    from annotator import EngineConfig, ModelSpec, ReadSpec, RunRequest, WriteSpec, run_job

    result = run_job(RunRequest(
        read=ReadSpec(source="photos/"),
        model=ModelSpec(engine=EngineConfig(model="toy", saliency="toy", device="cpu"), vocab="colours.txt"),
        write=WriteSpec(output="out/"),
    ))
    result.exit_code, result.summary["images"]

A misspelt field is a ``TypeError`` when the object is built; a value of the wrong type
or out of range is a ``ConfigError``. Nothing here touches the file system or the
network: the vocabulary, the source and the output are checked by the job's stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotator.config import DEFAULT_SHARD_SIZE, ConfigError, EngineConfig
from annotator.inputs.decode import DEFAULT_MAX_PIXELS
from annotator.inputs.listing import DEFAULT_MAX_BYTES
from annotator.storage.redact import redact_uri, refuse_credentials, register_options_secrets, take_credentials

__all__ = ["DEFAULT_OUTPUT", "SAMPLES_DIR", "GT_FORMATS", "NOT_ROW_AFFECTING", "ModelSpec", "ReadSpec", "RunRequest",
           "ScheduleSpec", "WriteSpec", "image_list_entries"]

#: The sample photographs (and their vocabulary) shipped with the package: the default source.
SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"
DEFAULT_OUTPUT = "annotator-output"
GT_FORMATS = ("coco", "voc-png", "hf-column")


#: ``annotator.run``'s options (argparse ``dest``) that change no row, and why: the
#: others are each in :meth:`RunRequest.identity` (``tests/test_request.py`` walks the
#: parser and checks that every option is in one or the other).
NOT_ROW_AFFECTING = {
    "num_actors": "how many actors run the shards",
    "address": "which Ray cluster runs them",
    "quiet": "the progress bar",
    "no_report": "report.html and the previews, written after the rows",
    "overwrite": "what to do with an output of another configuration",
    "retry_failed": "which rows of an output of this configuration run again (its error rows), not what a row holds",
    "best_effort_lease": "how the output's one writer is enforced on a store without an atomic create",
    "max_failure_rate": "the verdict (the exit code), not the rows",
    "storage_options": "credentials and endpoints: never stored",
    "output": "where the rows go",
    "batch_size": "images per engine step",
    "shard_size": "the parts' layout, checked by the manifest itself",
    "weights_dir": "where weights are looked up: the files count by their sha256 ('weights')",
    "dino_weights": "a weight file's place: it counts by its sha256 ('weights.dino')",
    "found_weights": "a weight file's place: it counts by its sha256 ('weights.found')",
    "vocab": "the vocabulary file's place: its classes and prompts count ('vocabulary')",
}


def image_list_entries(path: str) -> list[str]:
    """The entries of ``--image-list`` ``path``: one per non-blank line, stripped, the
    first of repeated ones kept. ConfigError for an unreadable or empty file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--image-list {path}: expected a UTF-8 text file, got {type(e).__name__}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    wanted = list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))
    if not wanted:
        raise ConfigError(f"--image-list {path}: expected one relative path, stem or id:N per line, "
                          "got an empty file")
    return wanted


def _type_ok(value: Any, hint: Any) -> bool:
    """``value`` fits the annotation ``hint`` (``int``, ``str | None``, ``dict``, a class);
    an int is a float, a bool is not an int."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(spec: Any) -> None:
    """ConfigError for the first field whose value does not fit its annotation."""
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if not _type_ok(value, hints[f.name]):
            expected = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
            raise ConfigError(f"{type(spec).__name__}.{f.name}: expected {expected}, "
                              f"got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class ReadSpec:
    """What to read. ``source`` (a folder, a glob or an fsspec URL; None = the bundled
    samples) or ``hf_dataset`` (hub name, ``save_to_disk`` folder, or folder of files),
    never both."""

    source: str | None = None
    hf_dataset: str | None = None
    hf_split: str | None = None
    hf_image_column: str | None = None
    #: read image cells whose path leaves the dataset's files (default: an 'unreadable' row)
    hf_allow_paths_outside: bool = False
    #: only these images: a file with one relative path, stem or id:N per line
    image_list: str | None = None
    #: files larger than this are refused before they are read (an 'unreadable' row)
    max_bytes: int = DEFAULT_MAX_BYTES
    #: images with more pixels than this are refused before decoding (None or 0: Pillow's
    #: limit, 178,956,970)
    max_pixels: int | None = None
    #: ground truth: COCO JSON, a folder of VOC-style PNGs, or ``hf-column:NAME``
    gt: str | None = None
    gt_format: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.source and self.hf_dataset:
            raise ConfigError("--source and --hf-dataset are mutually exclusive; got both")
        if (self.hf_split or self.hf_image_column) and not self.hf_dataset:
            raise ConfigError("--hf-split/--hf-image-column need --hf-dataset")
        if self.hf_allow_paths_outside and not self.hf_dataset:
            raise ConfigError("--hf-allow-paths-outside: expected --hf-dataset (it is about a dataset's image cells), "
                              "got no --hf-dataset")
        if self.gt_format is not None and self.gt_format not in GT_FORMATS:
            raise ConfigError(f"--gt-format: expected one of {GT_FORMATS}, got {self.gt_format!r}")
        if self.gt_is_hf_column and not self.hf_dataset:
            raise ConfigError("--gt hf-column:NAME / --gt-format hf-column: expected --hf-dataset (the labels are "
                              "a column of that dataset), got no --hf-dataset")
        if self.max_bytes < 1:
            raise ConfigError(f"--max-bytes: expected a positive number of bytes, got {self.max_bytes}")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise ConfigError(f"--max-pixels: expected a positive number of pixels, got {self.max_pixels}")

    @property
    def gt_is_hf_column(self) -> bool:
        """The ground truth is a label column of the Hugging Face dataset."""
        return self.gt_format == "hf-column" or (self.gt or "").startswith("hf-column:")


@dataclass(frozen=True)
class ModelSpec:
    """What to run: the engine (model, saliency, geometry, device) and the vocabulary
    file (one class per line, optional ``name: prompt; prompt``)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    vocab: str = str(SAMPLES_DIR / "vocab.txt")

    def __post_init__(self) -> None:
        _check_types(self)


@dataclass(frozen=True)
class WriteSpec:
    """Where to write: the output folder or fsspec URL (a ``user:password@`` in it is
    moved into ``RunRequest.storage_options`` by the request); ``overwrite`` replaces an output
    made with another configuration or listing; ``retry_failed`` runs the error rows of an
    existing output of the same configuration again (:mod:`annotator.shards.retry_failed`);
    ``report`` writes report.html and the previews; ``best_effort_lease`` accepts a
    best-effort lease on a store that offers no atomic create (:mod:`annotator.storage.lock`;
    refused otherwise)."""

    output: str = DEFAULT_OUTPUT
    overwrite: bool = False
    report: bool = True
    retry_failed: bool = False
    best_effort_lease: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        if not self.output:
            raise ConfigError("--output: expected a folder or an fsspec URL, got an empty string")
        if self.retry_failed and self.overwrite:
            raise ConfigError("--retry-failed: expected an output to resume (its error rows run again), got "
                              "--overwrite too, which replaces the output: choose one")


@dataclass(frozen=True)
class ScheduleSpec:
    """How to schedule: images per shard (one Parquet part each), actors (None: one per
    GPU, or CPUs/2 CPU actors), the Ray cluster to join (None: ``$RAY_ADDRESS`` or a new
    local Ray), the fraction of failed images above which the run fails (exit code 1),
    and ``quiet`` (no progress bar)."""

    shard_size: int = DEFAULT_SHARD_SIZE
    num_actors: int | None = None
    address: str | None = None
    max_failure_rate: float = 0.05
    quiet: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size: expected at least 1 image per shard, got {self.shard_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"--num-actors: expected at least 1 actor, got {self.num_actors}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"--max-failure-rate: expected a fraction in [0, 1], got {self.max_failure_rate}")


@dataclass(frozen=True)
class RunRequest:
    """One annotation run: what to read, what to run, where to write, how to schedule,
    and the fsspec ``storage_options`` used for the source, the output and the ground
    truth (never logged nor stored). Every part has defaults: ``RunRequest()`` annotates
    the bundled samples with the default model into ``annotator-output``.

    Credentials (README, "Paths, credentials, untrusted strings"): a ``user:password@``
    in a URL read through fsspec (``--source``, ``--gt``, ``--output``, ``--saliency
    precomputed:``) is moved into ``storage_options`` when the request is built
    (:func:`annotator.storage.redact.take_credentials`); in a value read as a local file
    or name (``--vocab``, ``--image-list``, ``--hf-dataset``, ``--pretrained``, the
    weights options, ``--address``) it is refused. The request never holds them in a
    URL, so nothing made from it (messages, the manifest, the parts) can show them."""

    read: ReadSpec = field(default_factory=ReadSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    write: WriteSpec = field(default_factory=WriteSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    storage_options: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_types(self)
        self._take_credentials()

    #: (option, where its value is in the request) for the values refused with credentials
    _LOCAL_VALUES = (("--vocab", "model.vocab"), ("--image-list", "read.image_list"),
                     ("--hf-dataset", "read.hf_dataset"), ("--pretrained", "model.engine.pretrained"),
                     ("--dino-weights", "model.engine.dino_weights"),
                     ("--found-weights", "model.engine.found_weights"),
                     ("--weights-dir", "model.engine.weights_dir"), ("--address", "schedule.address"))

    def _take_credentials(self) -> None:
        """The credential rule over every URL and path of the request (see the class)."""
        read, model, write, engine = self.read, self.model, self.write, self.model.engine
        options = dict(self.storage_options)
        register_options_secrets(options)
        for option, where in self._LOCAL_VALUES:
            value: Any = self
            for name in where.split("."):
                value = getattr(value, name)
            refuse_credentials(value, option)
        source, options = take_credentials(read.source, options, "--source")
        gt = read.gt
        if gt and not read.gt_is_hf_column:
            gt, options = take_credentials(gt, options, "--gt")
        output, options = take_credentials(write.output, options, "--output")
        saliency = engine.saliency
        if saliency.startswith("precomputed:"):
            location, options = take_credentials(saliency.split(":", 1)[1], options, "--saliency precomputed:")
            saliency = f"precomputed:{location}"
        if (source, gt) != (read.source, read.gt):
            object.__setattr__(self, "read", dataclasses.replace(read, source=source, gt=gt))
        if output and output != write.output:
            object.__setattr__(self, "write", dataclasses.replace(write, output=output))
        if saliency != engine.saliency:
            object.__setattr__(self, "model", dataclasses.replace(model, engine=dataclasses.replace(engine,
                                                                                                    saliency=saliency)))
        if options != self.storage_options:
            object.__setattr__(self, "storage_options", options)

    def source_description(self, hf_split: str | None = None) -> str:
        """The source as shown and recorded: the URL or path without credentials, or
        ``hf:NAME:SPLIT`` (``hf_split``: the split resolved by the listing)."""
        read = self.read
        if read.hf_dataset:
            return f"hf:{redact_uri(read.hf_dataset)}:{hf_split or read.hf_split or ''}"
        return redact_uri(read.source or str(SAMPLES_DIR))

    def identity(self, *, vocabulary: list | None = None, source: str | None = None,
                 weights: dict[str, str] | None = None) -> dict:
        """Every setting that changes a row, as JSON: what the run's configuration hash
        covers (a finished run re-run with any of them changed is refused, never
        resumed with the old rows). The options that change no row are
        :data:`NOT_ROW_AFFECTING`.

        Contents count, not names: the vocabulary's classes and prompts (read from
        ``model.vocab`` unless ``vocabulary`` is given), the image list's entries
        (sha256), the weight files' sha256 (``weights``: from
        :func:`annotator.models.describe_weights`, reduced by
        :func:`annotator.storage.identity.weights_identity`; left out when None).
        ``source``: the listing's description (resolved Hugging Face split); default
        :meth:`source_description`. Credentials never appear (URLs are redacted)."""
        import hashlib

        from annotator.inputs.vocab import load_vocabulary
        from annotator.storage.identity import weights_identity

        read = self.read
        if vocabulary is None:
            vocabulary = load_vocabulary(self.model.vocab).to_json()
        entries = image_list_entries(read.image_list) if read.image_list else None
        identity = {
            "engine": self.model.engine.identity(),  # model, tag, templates, saliency (precomputed: its source),
            "vocabulary": vocabulary,                 # geometry, protocol, precision, seed
            # --precision auto is bf16 on CUDA and fp32 on most CPUs: then the device changes rows
            "device": self.model.engine.device if self.model.engine.precision == "auto" else None,
            "source": source if source is not None else self.source_description(),
            "hf_image_column": read.hf_image_column,
            **({"hf_allow_paths_outside": True} if read.hf_allow_paths_outside else {}),
            "image_list": (None if entries is None else
                           "sha256:" + hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()),
            "max_bytes": read.max_bytes,
            "max_pixels": read.max_pixels or DEFAULT_MAX_PIXELS,
            "gt": redact_uri(read.gt) if read.gt else None,
            "gt_format": read.gt_format,
        }
        if weights is not None:
            identity["weights"] = weights_identity(weights)
        return identity

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunRequest:
        """The request of ``python -m annotator.run``'s parsed options (the one place the
        command line becomes a request). ConfigError for anything refused."""
        from annotator.cli import engine_config_from_args, parse_storage_options

        return cls(
            read=ReadSpec(source=args.source, hf_dataset=args.hf_dataset, hf_split=args.hf_split,
                          hf_image_column=args.hf_image_column,
                          hf_allow_paths_outside=getattr(args, "hf_allow_paths_outside", False),
                          image_list=args.image_list,
                          max_bytes=args.max_bytes, max_pixels=args.max_pixels, gt=args.gt,
                          gt_format=args.gt_format),
            model=ModelSpec(engine=engine_config_from_args(args), vocab=args.vocab),
            write=WriteSpec(output=args.output, overwrite=args.overwrite, report=not args.no_report,
                            retry_failed=getattr(args, "retry_failed", False),
                            best_effort_lease=getattr(args, "best_effort_lease", False)),
            schedule=ScheduleSpec(shard_size=args.shard_size, num_actors=args.num_actors, address=args.address,
                                  max_failure_rate=args.max_failure_rate, quiet=args.quiet),
            storage_options=parse_storage_options(args.storage_options),
        )
