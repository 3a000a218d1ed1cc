#!/usr/bin/env bash
# Wheels for bench/gpu_check_jax.py on the lent GPU machine (Python 3.12, JAX with CUDA, no
# TensorFlow, no network): keras-koopman itself, Keras and the two of Keras's needs that the
# image lacks (namex, optree; it has numpy, absl-py, h5py, rich, ml-dtypes, packaging).
# Into .whl/ (ignored by git); a few MiB, under the 64 MiB a device call carries.
# On the device:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#                 && PYTHONPATH=/tmp/site python3 bench/gpu_check_jax.py --json $OUT/gpu_jax.json
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl . 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w .whl .
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    keras==3.15.1 namex optree
du -sh .whl && ls .whl
