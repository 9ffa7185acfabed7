#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned torch pair, extagg (editable) with the default model, eval, figures and test extras,
# and the example third-party plugin. Re-running skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c 'import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")))' 2>/dev/null; then
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! "$VPY" -c 'import extagg, extagg_builtins, efficientnet_lite_pytorch, pytest, hypothesis, extagg_hello, matplotlib, playwright, pyarrow, timm' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.extagg-installed ] || [ examples/extagg-hello/pyproject.toml -nt .venv/.extagg-installed ]; then
  "$VPY" -m pip install -q -e ".[default-model,eval,figures,test,sweep,timm]"
  "$VPY" -m pip install -q -e examples/extagg-hello
  # The peers that comparison tests run against (pytorch-grad-cam, Captum, Zennit, pycocotools), with the torch pair pinned;
  # those tests skip where they are missing, so a failed install only warns.
  "$VPY" -m pip install -q -e ".[peers]" torch==2.14.1 torchvision==0.29.1 \
    || echo "extagg setup: the peers extra did not install; the peer comparison tests will skip" >&2
  touch .venv/.extagg-installed
fi
# The report's browser test (tests/test_report_browser.py) drives Debian's chromium through playwright (the test
# extra); playwright's own browser download is never used. Installed only where missing and apt-get can run (root).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
    || echo "extagg setup: chromium did not install; tests/test_report_browser.py will skip (fail under CI)" >&2
fi
# Build the native phase-2 kernels now (cached in ~/.cache/extagg), not in the first call; a warning if no compiler.
"$VPY" -c 'import extagg.native as n; print("extagg native kernels:", "built" if n.available() else "unavailable (PyTorch path)")'
