#!/usr/bin/env bash
# Build the reference environment for the trl 0.9.6 comparisons (benchmarks/trl_compare.py,
# benchmarks/ppo_step.py): the legacy PPOTrainer the EmpRL authors used, in its own venv
# (.venv-trl096, git-ignored) because it needs transformers 4.44 and numpy<2.
# Usage: bash benchmarks/trl_env.sh [VENV_DIR]      (default: <repo>/.venv-trl096)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; if pip cannot find it,
# try TORCH_SPEC=torch, the newest torch pip allows).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-trl096}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --disable-pip-version-check \
  trl==0.9.6 transformers==4.44.2 accelerate==0.34.2 datasets==2.21.0 \
  "numpy<2" "pyarrow<17" rich "$TORCH_SPEC" sentencepiece safetensors
"$VENV/bin/python" -c "import trl, transformers, torch; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
