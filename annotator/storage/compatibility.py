"""Whether an output folder may be resumed by this run: what identifies a run, and what
differs between the run that wrote a folder and this one (said in the user's words).

:meth:`annotator.storage.manifest.Manifest.check_compatible` refuses a resume with
:class:`OutputConflictError` listing :func:`differences`; ``--overwrite`` starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from annotator.errors import RefusedOutputError
from annotator.storage.identity import setting_differences

__all__ = ["OutputConflictError", "RunIdentity", "differences"]


class OutputConflictError(RefusedOutputError, RuntimeError):
    """The output folder holds results of a different configuration or input listing."""


@dataclass(frozen=True)
class RunIdentity:
    """What a resumed run must share with the run that wrote the folder.

    ``config_hash`` and ``listing_fingerprint`` always; the shard layout (``num_shards``,
    ``shard_size``) when given. ``settings`` (the settings behind the hash) and
    ``num_images`` only explain a difference: they are absent from older manifests.
    """

    config_hash: str
    listing_fingerprint: str
    num_shards: int | None = None
    shard_size: int | None = None
    settings: dict | None = None
    num_images: int | None = None


def differences(recorded: RunIdentity, now: RunIdentity) -> list[str]:
    """What differs between ``recorded`` (the folder's run) and ``now``, one phrase each
    (``[]``: the folder may be resumed). A layout field counts only when ``now`` gives it."""
    diffs = []
    if now.config_hash != recorded.config_hash:
        changed = (setting_differences(recorded.settings, now.settings)
                   if recorded.settings is not None and now.settings else [])
        if changed:
            diffs.append("other settings: " + ", ".join(changed))
        else:
            diffs.append(f"configuration hash {recorded.config_hash} (now {now.config_hash})")
    if now.listing_fingerprint != recorded.listing_fingerprint:
        if recorded.num_images is not None and now.num_images is not None and now.num_images != recorded.num_images:
            diffs.append(f"another input listing: {recorded.num_images} images (now {now.num_images})")
        else:
            diffs.append(f"another input listing: other file names (listing fingerprint "
                         f"{recorded.listing_fingerprint}, now {now.listing_fingerprint})")
    if now.num_shards is not None and now.num_shards != recorded.num_shards:
        diffs.append(f"{recorded.num_shards} shards (now {now.num_shards})")
    if now.shard_size is not None and now.shard_size != recorded.shard_size:
        diffs.append(f"shard size {recorded.shard_size} (now {now.shard_size})")
    return diffs
