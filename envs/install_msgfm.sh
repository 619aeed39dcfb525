#!/usr/bin/env bash
# Snakemake's post-deploy script of every env here (envs/<env>.post-deploy.sh links to it): it
# runs once in the new env, from a copy in .snakemake/conda/, in the working directory Snakemake
# was started in. A pip entry in the env file would instead resolve relative to that copy.
# Editable, so a change to msgfm needs no new env; --no-deps, because the env file lists every
# dependency from conda-forge (tests/test_envs.py) and pip must not mix in PyPI builds of them.
# --no-build-isolation: the env's setuptools (>= 70.1 builds an editable wheel by itself) does
# the build, so nothing is fetched from PyPI.
set -euo pipefail
if [ ! -f msgfm/cli.py ]; then
    echo "envs/install_msgfm.sh: start snakemake from the msgfm checkout (no msgfm/ in $PWD)" >&2
    exit 1
fi
python -m pip install --quiet --no-deps --no-build-isolation --editable .
