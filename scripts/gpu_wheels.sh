#!/usr/bin/env bash
# Download the wheels the GPU check (python -m ferpipe.tools.gpucheck) needs beyond what a GPU machine
# typically has (Python 3.12 with torch, torchvision, numpy, PyYAML, tqdm; no pip index there):
# pydantic, at requirements.txt's version, with its dependencies, for CPython 3.12 on x86-64
# Linux, into vendor/wheels/ (ignored by git). Run it on a machine with internet; then copy the
# repo with vendor/wheels/ and data/fer2013.zip to the GPU machine (docs/gpu.md).
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION]   # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
pin=$(grep -E '^pydantic==' requirements.txt | cut -d' ' -f1)
rm -rf vendor/wheels
mkdir -p vendor/wheels
python3 -m pip download --quiet --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d vendor/wheels "$pin"
ls -1 vendor/wheels
du -sh vendor/wheels
