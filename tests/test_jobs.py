"""``jobs/``: the ready vocabularies, the runtime env, the cluster config and the submit
examples stay valid (parsed with the same code and schemas that will consume them)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from annotator.inputs.vocab import load_vocabulary

JOBS = Path(__file__).resolve().parent.parent / "jobs"
REPO = JOBS.parent

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
]


def _yaml(name: str) -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((JOBS / name).read_text(encoding="utf-8"))


def test_voc_vocabulary():
    vocab = load_vocabulary(JOBS / "vocab" / "voc.txt")
    assert len(vocab) == 21
    assert vocab.names == ["background", *VOC_CLASSES]  # VOC label order: index = label value
    assert all(c.synonyms == (c.name,) for c in vocab.classes)  # plain names: the paper's prompts


def test_coco_vocabulary_matches_coco_categories(tmp_path):
    vocab = load_vocabulary(JOBS / "vocab" / "coco.txt")
    assert len(vocab) == 81
    names = vocab.names[1:]
    assert names[:5] == ["person", "bicycle", "car", "motorcycle", "airplane"]
    assert names[-3:] == ["teddy bear", "hair drier", "toothbrush"]
    assert {"traffic light", "dining table", "tv", "cell phone", "potted plant"} <= set(names)

    # the names map onto COCO categories one to one (how --gt instances.json is matched)
    from annotator.evaluation.gt import COCOInstancesGT

    coco_ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
                56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                85, 86, 87, 88, 89, 90]
    assert len(coco_ids) == 80
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(coco_ids, names, strict=True)]
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    gt = COCOInstancesGT(str(instances), vocab.names)
    assert gt.unmatched_categories == []
    assert gt.category_to_class == {cid: k for k, cid in enumerate(coco_ids, start=1)}


def test_runtime_env_is_valid_and_lists_the_dependencies():
    doc = _yaml("runtime_env.yaml")
    assert set(doc) <= {"working_dir", "excludes", "pip", "env_vars", "py_modules", "config"}
    assert doc["working_dir"] == "."
    assert ".git/" in doc["excludes"] and "tests/" in doc["excludes"]
    assert all(isinstance(v, str) for v in doc["env_vars"].values())  # Ray requires strings
    assert "ANNOTATOR_WEIGHTS_DIR" in doc["env_vars"]
    assert not any(re.search(r"(?i)secret|password|access_key", k) for k in doc["env_vars"])
    ray_runtime_env = pytest.importorskip("ray.runtime_env")
    ray_runtime_env.RuntimeEnv(**doc)  # Ray's own validation of every field

    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")

    listed = {name(p) for p in doc["pip"]["packages"]}
    missing = {name(d) for d in deps} - listed - {"ray"}  # ray is the cluster's own
    assert not missing, f"jobs/runtime_env.yaml lacks dependencies of pyproject.toml: {sorted(missing)}"


def test_runtime_env_working_dir_upload_is_small(tmp_path):
    """What `--runtime-env jobs/runtime_env.yaml` uploads: the package, not tests or .git."""
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    doc = _yaml("runtime_env.yaml")
    target = tmp_path / "pkg.zip"
    try:
        packaging.create_package(str(REPO), target, include_gitignore=True, excludes=doc["excludes"], logger=None)
    except TypeError:  # a private API: its signature differs between Ray versions
        pytest.skip("ray._private.runtime_env.packaging.create_package has another signature")
    import zipfile

    names = zipfile.ZipFile(target).namelist()
    assert "annotator/__init__.py" in names and "jobs/vocab/coco.txt" in names
    assert "annotator/data/samples/vocab.txt" in names
    assert not [n for n in names if n.startswith((".git/", "tests/")) or "__pycache__" in n]
    assert target.stat().st_size < 20 * 2**20


def test_cluster_config_is_valid():
    cfg = _yaml("cluster.yaml")
    ray = pytest.importorskip("ray")
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [t for t in types.values() if re.match(r"(g5|g6|p4d|p5)\.", t["node_config"]["InstanceType"])]
    assert len(gpu_types) >= 1
    assert all(t.get("max_workers", 0) <= cfg["max_workers"] for t in types.values())
    assert any("pip install" in c and "/home/ray/annotator" in c for c in cfg["setup_commands"])
    assert "/home/ray/annotator" in cfg["file_mounts"]
    assert "gpu" in cfg["docker"]["image"]
    text = (JOBS / "cluster.yaml").read_text()
    assert not re.search(r"(?i)aws_secret|secret_access_key\s*[:=]\s*\S", text)


def _submit_commands() -> list[str]:
    text = (JOBS / "submit_examples.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip().startswith("ray job submit")]


def test_submit_examples_use_existing_options():
    from annotator.run import build_parser

    commands = _submit_commands()
    assert len(commands) >= 4
    joined = " ".join(commands)
    assert "s3://" in joined and "--device cuda" in joined and "127.0.0.1" in joined

    try:
        from ray.dashboard.modules.job.cli import submit
        ray_options = {o for p in submit.params for o in p.opts}
    except ImportError:
        ray_options = None
    parser = build_parser()
    for cmd in commands:
        ray_part, sep, entry = cmd.partition(" -- ")
        assert sep, f"no ' -- ' before the entrypoint in: {cmd}"
        ray_args = shlex.split(ray_part)[3:]
        if ray_options is not None:
            unknown = [a for a in ray_args if a.startswith("--") and a not in ray_options]
            assert not unknown, f"`ray job submit` has no option {unknown}: {cmd}"
        for flag in ("--runtime-env", "--working-dir"):
            if flag in ray_args:
                assert (REPO / ray_args[ray_args.index(flag) + 1]).exists(), cmd
        argv = shlex.split(entry)
        assert argv[:3] == ["python", "-m", "annotator.run"], cmd
        try:
            args = parser.parse_args(argv[3:])
        except SystemExit:
            pytest.fail(f"annotator.run rejects the options of: {cmd}")
        if args.vocab.startswith("jobs/"):
            assert (REPO / args.vocab).is_file(), cmd
        if args.storage_options:
            json.loads(args.storage_options)
