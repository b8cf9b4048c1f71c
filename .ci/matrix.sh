#!/usr/bin/env bash
# The longevity matrix: the test suite on the oldest and newest Python that this machine's pyenv
# has (3.9, 3.13), with the oldest NumPy pyllm supports (1.21) and the newest 2.x.
#   bash .ci/matrix.sh            # each cell: fresh venv, clean copy of HEAD, editable install, pytest
# Needs pyenv with 3.9 and 3.13 and PyPI access for the venvs. Not part of .ci/run (time budget).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
status=0
run_cell() {  # name, python version prefix, numpy requirement
    local name=$1 py=$2 np=$3
    local exe
    exe=$(ls -d "$PYENV_ROOT"/versions/"$py".*/bin/python 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$exe" ]; then echo "== $name: Python $py not found, skipped"; return; fi
    git clone -q "$ROOT" "$WORK/$name"
    "$exe" -m venv "$WORK/$name/.venv"
    local vpy="$WORK/$name/.venv/bin/python"
    (cd "$WORK/$name" && "$vpy" -m pip install -q -e ".[test]" && "$vpy" -m pip install -q "$np")
    echo "== $name: $("$vpy" -c 'import sys, numpy; print("Python", sys.version.split()[0], "NumPy", numpy.__version__)')"
    if ! (cd "$WORK/$name" && PYLLM_REQUIRE_C=1 "$vpy" -m pytest -q -p no:cacheprovider | tail -n 1); then
        status=1
    fi
}
run_cell py39-numpy1 3.9 "numpy==1.21.6"
run_cell py39-numpy1.26 3.9 "numpy<2"
run_cell py313-numpy2 3.13 "numpy>=2"
exit $status
