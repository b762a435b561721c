#!/usr/bin/env bash
# Regenerate docs/report.png, the README's picture of the review report, from a REAL run:
# the toy test model (segments saturated colours; no weights needed) on the photographs
# bundled with the package, then a headless-Chromium screenshot of its report.html.
# Needs the package installed and Debian's chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m annotator.run --model toy --saliency toy --vocab jobs/vocab/colours.txt \
  --device cpu --output "$work/run" --quiet
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --hide-scrollbars --window-size=1280,1600 \
  --screenshot="$work/report.png" "file://$work/run/report.html" 2>/dev/null
python - "$work/report.png" docs/report.png <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(  # small in git;
    sys.argv[2], optimize=True)  # octree keeps the swatches' pure colours (median cut turned red into crimson)
PY
echo "wrote docs/report.png from $(ls "$work/run/parts" | wc -l) part(s) of a toy run"
