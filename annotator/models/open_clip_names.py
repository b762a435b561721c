"""open_clip's model names and pretrained tags, as data, and where each tag's checkpoint
is found: resolved without importing open_clip or torch, so that the driver (validate,
list, schedule, resume, merge) stays small for every model.

``open_clip_names.json`` (next to this module) is open_clip's own registry at one
version: every model name (``open_clip.list_models()``) with its pretrained tags and,
per tag, the Hugging Face repository (``hf_hub``) and URL (``url``) its checkpoint comes
from (``open_clip.pretrained.get_pretrained_cfg``). It is regenerated with
``python -m annotator.models.open_clip_names`` after an upgrade of open_clip
(``tests/models/test_open_clip_names.py`` compares it with the installed open_clip).
When the installed open_clip is another version than the table's, the names are read
from open_clip itself (importing it, and torch, once).

Checkpoints are found and fetched as open_clip's ``download_pretrained`` does (the Hugging
Face repository first, its ``.safetensors`` file preferred; the URL otherwise, with the
sha256 its URL carries), with ``huggingface_hub`` and the standard library only.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from annotator.config import ConfigError
from annotator.errors import MissingWeightsError
from annotator.models import weights as W

log = logging.getLogger(__name__)


class HubWeightsMissingError(MissingWeightsError, FileNotFoundError):
    """A checkpoint that its Hugging Face repository does not hold (or could not send):
    missing weights (exit 2); a FileNotFoundError for callers that catch those."""

TABLE_PATH = Path(__file__).resolve().with_name("open_clip_names.json")
#: open_clip's default file names in a Hugging Face repository (``open_clip.pretrained``)
HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"
#: What a ``--pretrained`` value that is neither a tag nor a file may be.
NO_WEIGHTS = ("random", "none", "")


def installed_version() -> str | None:
    """The installed open_clip's version (from its distribution's metadata: no import)."""
    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def table_from_open_clip() -> dict[str, Any]:
    """The table as the installed open_clip says it (imports open_clip, and torch)."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    models: dict[str, dict[str, dict[str, Any]]] = {}
    for model in open_clip.list_models():
        models[model] = {}
        for tag in oc_pretrained.list_pretrained_tags_by_model(model):
            cfg = oc_pretrained.get_pretrained_cfg(model, tag)
            models[model][tag] = {"hf_hub": cfg.get("hf_hub", ""), "url": cfg.get("url", "")}
            if cfg.get("quick_gelu"):  # trained with QuickGELU: open_clip applies it only for its own tag download
                models[model][tag]["quick_gelu"] = True
    return {"open_clip_version": installed_version(), "models": models}


@functools.lru_cache(maxsize=1)
def committed_table() -> dict[str, Any]:
    """``open_clip_names.json`` as committed."""
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _models() -> dict[str, dict[str, dict[str, str]]]:
    table = committed_table()
    version = installed_version()
    if version is None or version == table["open_clip_version"]:
        return table["models"]
    log.info("open_clip %s is installed, its names table is of %s: reading the names from open_clip itself",
             version, table["open_clip_version"])
    return table_from_open_clip()["models"]


def list_models() -> list[str]:
    """Every open_clip model name (``open_clip.list_models()``)."""
    return list(_models())


def pretrained_tags(model: str) -> list[str]:
    """The pretrained tags of ``model`` (``list_pretrained_tags_by_model``)."""
    return list(_models().get(model, {}))


def pretrained_source(model: str, tag: str) -> dict[str, str]:
    """``{"hf_hub": ..., "url": ..., ["quick_gelu": True]}`` of ``model``/``tag`` (``{}`` when unknown); tags are
    matched as open_clip matches them (case and ``-``/``_`` ignored)."""
    return _models().get(model, {}).get(tag.lower().replace("-", "_"), {})


def needs_quick_gelu(model: str, pretrained: str | None) -> bool:
    """``model``/``pretrained`` is a tag whose weights were trained with QuickGELU (OpenAI's
    CLIP and some LAION/YFCC runs). open_clip applies it from the tag's config only when
    it downloads the tag itself; given the resolved checkpoint FILE it builds the model
    with plain GELU unless ``force_quick_gelu`` is passed, which :func:`annotator.models.
    clip.build_open_clip` does when this says so. False for files and unknown tags (a
    ``*-quickgelu`` model name carries the setting in its own config)."""
    if not pretrained:
        return False
    return bool(pretrained_source(model, pretrained).get("quick_gelu"))


def check_names(model: str, pretrained: str) -> None:
    """ValueError naming the valid values for an unknown model, or an unknown tag that is
    not a checkpoint file nor ``random``."""
    if model not in _models():
        raise ConfigError(
            f"--model: unknown open_clip model {model!r}; expected one of open_clip.list_models() "
            f"(e.g. ViT-B-32, ViT-B-16) or the test models 'tiny-random', 'toy'"
        )
    if pretrained in NO_WEIGHTS or _looks_like_file(pretrained) or Path(pretrained).expanduser().is_file():
        return
    if not pretrained_source(model, pretrained):
        raise ConfigError(
            f"--pretrained: unknown tag {pretrained!r} for {model}; expected one of {pretrained_tags(model)}, "
            f"a local checkpoint file, or 'random'"
        )


def _looks_like_file(pretrained: str) -> bool:
    return any(ch in pretrained for ch in "/\\") or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _safe_alternatives(filename: str) -> list[str]:
    """The ``.safetensors`` names open_clip tries before ``filename`` on the Hub."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def _hub_files(hub: str) -> tuple[str, list[str]]:
    """(repository, file names to try in order) of an ``hf_hub`` entry: ``org/name/`` is
    the repository with open_clip's default file, ``org/name/file`` one file."""
    repo, filename = (hub, "") if hub.count("/") == 1 else os.path.split(hub)  # 'org/name': a repository
    filename = filename or HF_WEIGHTS_NAME
    return repo, [*_safe_alternatives(filename), filename]


def _url_sha256(url: str) -> str:
    """The sha256 (or its prefix) that open_clip checks a URL's download against."""
    name = os.path.basename(url)
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        return os.path.splitext(name)[0].split("-")[-1]
    return ""


def manual_download(model: str, pretrained: str, source: dict[str, str], weights_dir: str) -> tuple[str, Path]:
    """(where a user fetches the checkpoint of ``model``/``pretrained`` by hand, the
    path in ``weights_dir`` where that file is then found). The file keeps its format:
    ``.safetensors`` from a Hugging Face repository, the URL's suffix otherwise
    (``.bin``/``.pt`` copies are accepted under the same stem)."""
    hub = (source.get("hf_hub") or "").rstrip("/")
    stem = f"open_clip_{model}_{pretrained}"
    if hub:
        repo, fname = (hub, HF_SAFE_WEIGHTS_NAME) if hub.count("/") == 1 else hub.rsplit("/", 1)
        suffix = Path(fname).suffix or ".safetensors"
        return f"https://huggingface.co/{repo}/resolve/main/{fname}", Path(weights_dir) / (stem + suffix)
    url = source.get("url", "")
    return url, Path(weights_dir) / (stem + (Path(url).suffix or ".pt"))


def _cached(source: dict[str, str], flat: Path, weights_dir: str) -> str | None:
    """A local copy: placed by hand under the name the error gives, in the Hugging Face
    cache under ``weights_dir``, or where a URL download is kept."""
    for f in (flat, flat.with_suffix(".bin"), flat.with_suffix(".pt")):
        if f.is_file():
            return str(f)
    hub = source.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, names = _hub_files(hub)
            for name in names:
                hit = try_to_load_from_cache(repo, name, cache_dir=weights_dir)
                if isinstance(hit, str):
                    return hit
        except Exception:  # noqa: BLE001 - cache layout differences: fall through to a download
            pass
    elif source.get("url"):
        kept = Path(weights_dir) / os.path.basename(source["url"])
        sha = _url_sha256(source["url"])
        if kept.is_file() and (not sha or W.sha256_file(kept).startswith(sha)):
            return str(kept)
    return None


def _download(source: dict[str, str], weights_dir: str) -> str:
    """Fetch the checkpoint as open_clip's ``download_pretrained`` does (Hub first)."""
    hub = source.get("hf_hub", "")
    if hub:
        from huggingface_hub import hf_hub_download

        repo, names = _hub_files(hub)
        error: Exception | None = None
        for name in names:
            try:
                return hf_hub_download(repo_id=repo, filename=name, cache_dir=weights_dir)
            except Exception as e:  # noqa: BLE001 - the next name; the last error is reported
                error = e
        raise HubWeightsMissingError(f"no {' or '.join(names)} in {repo} ({error})")
    url = source["url"]
    return str(W.download_verified(url, Path(weights_dir) / os.path.basename(url), _url_sha256(url) or None))


def resolve_open_clip_weights(model: str, pretrained: str,
                              weights_dir: str) -> tuple[str | None, W.MissingWeight | None]:
    """``pretrained`` (tag or file) -> (a local checkpoint path, or what is missing),
    downloading when possible. ValueError for an unknown model or tag. Imports neither
    open_clip nor torch."""
    check_names(model, pretrained)
    option = f"--pretrained /path/to/checkpoint (an open_clip checkpoint of {model})"
    if pretrained in NO_WEIGHTS:
        return None, None
    p = Path(pretrained).expanduser()
    if p.is_file():
        return str(p), None
    if _looks_like_file(pretrained):
        return None, W.MissingWeight(f"CLIP checkpoint {pretrained}", "file not found", option)
    source = pretrained_source(model, pretrained)
    url, flat = manual_download(model, pretrained, source, weights_dir)
    hit = _cached(source, flat, weights_dir)
    if hit:
        return hit, None
    host = "huggingface.co" if source.get("hf_hub") else (source.get("url") or "https://unknown/").split("/")[2]
    what = f"CLIP weights {model}/{pretrained}"
    if not W.network_reachable(host):
        return None, W.MissingWeight(what, f"{host} is unreachable (offline?) and no copy is in {weights_dir}",
                                     option, url=url, save_as=str(flat))
    try:
        return _download(source, weights_dir), None
    except Exception as e:  # noqa: BLE001 - network errors of every flavour end up in one report
        return None, W.MissingWeight(what, f"download failed: {e}", option, url=url, save_as=str(flat))


def main() -> int:
    """Rewrite ``open_clip_names.json`` from the installed open_clip."""
    table = table_from_open_clip()
    TABLE_PATH.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tags = sum(len(t) for t in table["models"].values())
    print(f"wrote {TABLE_PATH}: open_clip {table['open_clip_version']}, {len(table['models'])} models, {tags} tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
