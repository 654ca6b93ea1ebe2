#!/usr/bin/env bash
# Post-deploy script of envs/segment.yaml: Snakemake runs it once, inside the newly created conda
# environment, after the packages of the yaml file are installed (needs GitHub access).
# It installs hpacellseg and its dependency pytorch_zoo from their public archives, both with
# --no-deps: their other requirements are in the env already (hpacellseg's opencv-python would add a
# second cv2 next to opencv-python-headless, and its pytorch_zoo requirement is a GitHub URL).
# pytorch_zoo's setup.py calls setuptools.setup() without importing setuptools, which fails under
# pip's PEP 517 build, so its wheel is built here with setuptools imported beforehand.
set -euo pipefail
HPACELLSEG_URL=${HPACELLSEG_URL:-https://github.com/CellProfiling/HPA-Cell-Segmentation/archive/master.zip}
PYTORCH_ZOO_URL=${PYTORCH_ZOO_URL:-https://github.com/haoxusci/pytorch_zoo/archive/master.zip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$PYTORCH_ZOO_URL" "$work/src" <<'PY'
import io, sys, urllib.request, zipfile
url, target = sys.argv[1:]
with urllib.request.urlopen(url, timeout=300) as response:
    zipfile.ZipFile(io.BytesIO(response.read())).extractall(target)
PY
cd "$work"/src/*/
python -c 'import setuptools, sys; sys.argv = ["setup.py", "-q", "bdist_wheel", "--dist-dir", sys.argv[1]]; exec(compile(open("setup.py").read(), "setup.py", "exec"))' "$work/dist"
cd "$work"
python -m pip install --no-deps "$work"/dist/*.whl
python -m pip install --no-deps "$HPACELLSEG_URL"
python -c "import hpacellseg, pytorch_zoo"
