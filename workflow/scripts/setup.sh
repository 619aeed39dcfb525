#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install msgfm into it.
# Idempotent and quick when nothing changed: the install is skipped while pyproject.toml and the
# constraints are the ones it was made from.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.msgfm-installed-$(cat pyproject.toml workflow/constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c workflow/constraints.txt -e ".[dev]"
    rm -f .venv/.msgfm-installed-*
    touch "$stamp"
fi
echo "msgfm environment ready: $(pwd)/.venv"
