#!/usr/bin/env bash
# Creates benchmarks/.venv-peers: extagg plus the peer libraries (Captum, pytorch-grad-cam, TorchCAM),
# pinned to the same torch/torchvision as the main venv so every timing uses the same kernels.
# The peers are installed with --no-deps so none of them can pull in a different torch; their
# torch-free runtime dependencies are installed explicitly. Idempotent: re-running only tops up.
#   bash benchmarks/setup_peers.sh            (PYTHON=python3.11 by default)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv-peers"
py="${PYTHON:-python3.11}"
ver() { "$root/.venv/bin/python" -c "import $1; print($1.__version__.split('+')[0])" 2>/dev/null || echo "$2"; }
torch_ver="$(ver torch 2.14.1)"
tv_ver="$(ver torchvision 0.29.1)"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip() { "$venv/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
pip "torch==$torch_ver" "torchvision==$tv_ver"
pip --no-deps captum grad-cam torchcam ttach
pip numpy matplotlib scipy tqdm opencv-python-headless scikit-learn pillow packaging
pip -e "$root"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md, torch
import captum.attr, pytorch_grad_cam, torchcam.methods, extagg  # noqa: F401  (import check)
print("torch", torch.__version__, "|", ", ".join(f"{d} {md.version(d)}" for d in ("captum", "grad-cam", "torchcam", "extagg")))
PY
