"""Digest of everything a toy run writes, to show that a change kept the outputs.

    python jobs/output_digest.py WORKDIR > digest.json     # before the change
    python jobs/output_digest.py WORKDIR > digest2.json    # after it, same WORKDIR
    diff digest.json digest2.json                          # nothing: byte for byte

Runs ``python -m annotator.run`` with the toy models on the bundled photographs and on
synthetic shapes with ground truth (2 shards), then every export and the report, and
prints the sha256 of each file under WORKDIR (emptied first). The only timestamps of the
outputs (``manifest.json``'s ``created``/``updated``, ``coco.json``'s
``info.date_created``) and the timing file ``scheduling.json`` are normalised away.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMESTAMP_KEYS = re.compile(rb'"(created|updated|date_created)": "[^"]*"')


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = TIMESTAMP_KEYS.sub(rb'"\1": "-"', data)
    if path.suffix == ".html":  # the report shows the manifest's dates
        data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", b"-", data)
    return hashlib.sha256(data).hexdigest()


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main(workdir: str) -> int:
    root = Path(workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    sys.path.insert(0, str(REPO))
    from tests.synthetic import write_dataset, write_vocab

    images, gt, _ = write_dataset(root / "data", 12, size_hw=(96, 128))
    vocab = write_vocab(root / "colours.txt")
    runs = {
        "samples": ["--vocab", str(REPO / "jobs" / "vocab" / "colours.txt")],
        "synthetic": ["--vocab", str(vocab), "--source", str(images), "--gt", str(gt), "--shard-size", "6"],
    }
    for name, args in runs.items():
        out = root / name
        _python("-m", "annotator.run", "--model", "toy", "--saliency", "toy", "--device", "cpu", "--quiet",
                "--num-actors", "1", "--output", str(out), *args)
        for fmt in ("coco", "labelstudio", "masks"):
            extra = ["--zip"] if fmt == "coco" else ["--confidence"] if fmt == "masks" else []
            _python("-m", "annotator.export", str(out), "--format", fmt, *extra)
    digests = {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*"))
               if p.is_file() and p.name != "scheduling.json" and "data" not in p.relative_to(root).parts[:1]}
    json.dump(digests, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
