#!/bin/sh
# Runs one command of a DVC stage with the project's Python environment, so that `dvc repro` works from any
# shell: the active environment when it has the study's packages, else the project's .venv (made by `make`).
# Without either it says what to do instead of failing with ModuleNotFoundError deep inside a stage.
root=$(cd "$(dirname "$0")/.." && pwd)
has_study() {
    python -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("meds", "polars", "torch", "lightgbm", "papermill", "claimsutil")))' \
        >/dev/null 2>&1
}
if ! has_study && [ -x "$root/.venv/bin/python" ]; then
    PATH="$root/.venv/bin:$PATH"
    export PATH
fi
if ! has_study; then
    echo "error: the Python on PATH ($(command -v python || echo none)) does not have the study's packages." >&2
    echo "Run 'make study' (it builds .venv and runs dvc repro), or 'make venv' then 'source .venv/bin/activate'" >&2
    echo "and 'dvc repro' again." >&2
    exit 2
fi
# nbconvert otherwise imports every installed exporter (webpdf, qtpdf, ...) only to list their names: about
# a second of each HTML export. The HTML it writes is the same byte for byte.
NBCONVERT_DISABLE_CONFIG_EXPORTERS=1
export NBCONVERT_DISABLE_CONFIG_EXPORTERS
exec "$@"
