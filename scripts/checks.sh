#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this); each fails on a violation.
#   - ruff: lint rules and the format of every Python file (pyproject.toml [tool.ruff])
#   - import-linter: the layers of docs/architecture.md run one way (pyproject.toml [tool.importlinter])
#   - mypy: types (pyproject.toml [tool.mypy]; strict for the modules listed there)
# import-linter and mypy read a regular install of the checkout in a temporary folder: with the editable install,
# the stage folders mapped into the predraft namespace (listener/ is predraft.listener) are invisible to static
# analysers (setuptools issue 4248).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin

"$venv/ruff" check .
"$venv/ruff" format --check .

installed=$(mktemp -d)
trap 'rm -rf "$installed" build' EXIT
rm -rf build  # setuptools would pack a stale build/lib (a module deleted since) into the install
"$venv/python" -m pip install --quiet --no-deps --target "$installed" .
# lint-imports puts the working directory first on sys.path: run it where the installed copy is.
(cd "$installed" && PYTHONPATH="$installed" "$OLDPWD/$venv/lint-imports" "$OLDPWD/pyproject.toml")
"$venv/mypy" --config-file pyproject.toml "$installed/predraft"
