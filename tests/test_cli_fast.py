"""The command line answers --help and argument errors without importing torch; the package's names stay public.

Each case runs in a fresh interpreter (torch, once imported, stays in ``sys.modules``): a wrapper calls
``extagg.cli.main`` and reports whether ``torch`` was imported by then.
"""
import json
import os
import subprocess
import sys

import pytest

WRAPPER = """
import json, sys
from extagg.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def run_cli(*argv):
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["torch"], done.stdout, done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["evaluate", "--help"], ["explain", "--help"],
                                  ["methods", "--help"], ["metrics", "--help"], ["plugins", "--help"],
                                  ["describe", "--help"]])
def test_help_imports_no_torch(argv):
    """Guards the lazy imports: before, `import extagg` (and so every --help) imported torch (about 2 s)."""
    code, torch_imported, out, _ = run_cli(*argv)
    assert code == 0 and "usage: extagg" in out
    assert not torch_imported


@pytest.mark.parametrize("argv", [["sweep", "--batch-size", "many"], ["explain", "--alpha", "2"], ["nosuch"],
                                  ["sweep", "--data", "imagenet"]])
def test_argument_errors_import_no_torch(argv):
    code, torch_imported, _, err = run_cli(*argv)
    assert code == 2 and "usage: extagg" in err and "error:" in err
    assert not torch_imported


def test_import_extagg_is_light_and_names_stay_public():
    """`import extagg` imports no torch; every name of extagg.__all__ (and of extagg.sweep / extagg.evaluation)
    still resolves, `from extagg import saliency` works, and a public function that shares its name with a
    submodule (extagg.evaluation.faithfulness) stays the function after the submodule is imported."""
    code = """
import sys, extagg, extagg.sweep, extagg.evaluation
light = "torch" not in sys.modules
from extagg import saliency, combine_layers, SaliencyMaps
import extagg.combine
import extagg.evaluation.faithfulness  # binds the submodule on the package: the function must stay
from extagg.evaluation import faithfulness, identity_check
missing = [(p.__name__, n) for p in (extagg, extagg.sweep, extagg.evaluation) for n in p.__all__
           if getattr(p, n, None) is None]
print(light, callable(saliency), combine_layers is extagg.combine.combine, callable(faithfulness),
      callable(identity_check), missing, "saliency" in dir(extagg), extagg.models.DEFAULT_MODEL)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "True", "True", "True", "[]", "True", "efficientnet-lite0"]


def test_sweep_default_model_matches_models():
    """The sweep's configuration spells the default model name itself (to import no torch): it must agree."""
    from extagg import models
    from extagg.sweep import config

    assert config.DEFAULT_MODEL == models.DEFAULT_MODEL
