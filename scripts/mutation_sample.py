#!/usr/bin/env python
"""A small, seeded mutation run: which one-line changes to the library do the tests not notice?

Each mutant changes one expression on one line of a chosen module: a comparison operator flipped (``<`` and
``<=``, ``==`` and ``!=``, ``is`` and ``is not``, ``in`` and ``not in``), ``+`` and ``-`` or ``*`` and ``/``
swapped, an integer constant changed (``0`` to ``1``, ``n`` to ``n + 1``), ``True`` and ``False`` swapped, an
``if``/``while``/conditional-expression test negated, a ``not`` dropped, ``and`` and ``or`` swapped, or
``min``/``max`` (also ``amin``/``amax``, ``argmin``/``argmax``, ``minimum``/``maximum``, ``clamp_min``/``clamp_max``)
swapped. Mutants are found on the syntax tree, so only the mutated expression's text on its line is replaced
(the rest of the file stays byte for byte); a mutant whose syntax tree equals the original's is dropped.

The candidates of all modules are sorted and a fixed sample is drawn with ``--seed`` (the same seed and sources
give the same mutants). The tree is copied once to a temporary folder; each mutant is written into the copy, the
chosen tests run there (``pytest -x``, a timeout per mutant) with the copy first on ``PYTHONPATH``, and the
copy's file is restored afterwards: the real files are never written. Hypothesis runs the ``mutation`` profile
of ``tests/conftest.py`` (10 examples, no shrinking) unless ``HYPOTHESIS_PROFILE`` names another. A mutant is
*killed* when the tests fail, *timed out* when they run past the timeout (at least ``--timeout-factor`` times
the unmutated run, so that a loaded machine does not pass for a hang), and *survives* when they pass. The
unmutated tests run first and again at the end; the run stops if they fail (a kill means nothing then).

    python scripts/mutation_sample.py --module extagg/layer_request.py --tests tests/test_layer_request.py \
        --sample 10 --seed 0 --timeout 120 [--json out.json] [--list] [--only ID ...]

``--module`` and ``--tests`` may be repeated (a folder as a module means its ``*.py`` files). ``--list`` prints
the sampled mutants without running anything; ``--only`` reruns the mutants with the given ids (as printed).
Exit status: 0 when every sampled mutant was killed, 1 when some survived, 2 on a usage or baseline error.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult}
NAME_SWAP = {"min": "max", "max": "min", "amin": "amax", "amax": "amin", "argmin": "argmax", "argmax": "argmin",
             "minimum": "maximum", "maximum": "minimum", "clamp_min": "clamp_max", "clamp_max": "clamp_min"}
IGNORED = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.egg-info", ".pytest_cache", ".hypothesis",
                                 "build", "dist", "*.so")


@dataclass
class Mutant:
    path: str  # relative to the repository root
    line: int
    col: int
    end: int
    kind: str
    old: str
    new: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}:{self.col}:{self.kind}"


def _variants(node: ast.AST):
    """(kind, mutated copy of ``node``) for every one-line change of ``node`` itself (not of its children)."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = CMP_SWAP.get(type(op))
            if swap:
                new = copy.deepcopy(node)
                new.ops[i] = swap()
                yield f"cmp{i}:{type(op).__name__}->{swap.__name__}", new
        if len(node.ops) == 1 and isinstance(node.ops[0], ast.Lt):
            new = copy.deepcopy(node)
            new.ops[0] = ast.Gt()
            yield "cmp0:Lt->Gt", new
    elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
        new = copy.deepcopy(node)
        new.op = BIN_SWAP[type(node.op)]()
        yield f"binop:{type(node.op).__name__}->{type(new.op).__name__}", new
    elif isinstance(node, ast.AugAssign) and type(node.op) in (ast.Add, ast.Sub):
        new = copy.deepcopy(node)
        new.op = BIN_SWAP[type(node.op)]()
        yield f"augassign:{type(node.op).__name__}->{type(new.op).__name__}", new
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"boolop:{type(node.op).__name__}->{type(new.op).__name__}", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop-not", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"const:{node.value}->{not node.value}", ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        value = 1 if node.value == 0 else (0 if node.value == 1 else node.value + 1)
        yield f"const:{node.value}->{value}", ast.Constant(value)
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in NAME_SWAP:
            new = copy.deepcopy(node)
            if isinstance(new.func, ast.Name):
                new.func.id = NAME_SWAP[name]
            else:
                new.func.attr = NAME_SWAP[name]
            yield f"call:{name}->{NAME_SWAP[name]}", new


def _negations(node: ast.AST):
    """The conditions of ``if``, ``while``, ``assert``-free conditional expressions and comprehension filters."""
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        yield node.test
    elif isinstance(node, ast.comprehension):
        yield from node.ifs


def _docstring_nodes(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def mutants_of(path: Path) -> list[Mutant]:
    """Every candidate one-line mutant of the module at ``path``."""
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    skip = _docstring_nodes(tree)
    rel = str(path.resolve().relative_to(ROOT))
    found: dict[str, Mutant] = {}

    def add(node, kind, replacement):
        if getattr(node, "lineno", None) is None or node.lineno != node.end_lineno or id(node) in skip:
            return
        line = lines[node.lineno - 1]
        # col_offset counts UTF-8 bytes
        raw = line.encode()
        old = raw[node.col_offset:node.end_col_offset].decode()
        new = ast.unparse(replacement)
        if old == new:
            return
        mutated = (raw[:node.col_offset].decode() + new + raw[node.end_col_offset:].decode())
        trial = lines[:node.lineno - 1] + [mutated] + lines[node.lineno:]
        try:
            if ast.dump(ast.parse("".join(trial))) == ast.dump(tree):
                return
        except SyntaxError:
            return
        m = Mutant(rel, node.lineno, node.col_offset, node.end_col_offset, kind, old, new)
        found.setdefault(m.id, m)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for kind, new in _variants(node):
            add(node, kind, new)
        for test in _negations(node):
            add(test, "negate", ast.UnaryOp(ast.Not(), copy.deepcopy(test)))
    return sorted(found.values(), key=lambda m: (m.path, m.line, m.col, m.kind))


def apply(m: Mutant, root: Path) -> tuple[Path, str]:
    """Write ``m`` into the tree at ``root``; return the file and its original text (to restore)."""
    target = root / m.path
    original = target.read_text()
    lines = original.splitlines(keepends=True)
    raw = lines[m.line - 1].encode()
    lines[m.line - 1] = raw[:m.col].decode() + m.new + raw[m.end:].decode()
    target.write_text("".join(lines))
    return target, original


def run_tests(root: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "mutation"),
               PYTHONPATH=os.pathsep.join([str(root), str(root / "plugins"), str(root / "examples/extagg-hello/src")]))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    tail = (done.stdout + done.stderr).strip().splitlines()
    status = {0: "survived", 5: "no-tests"}.get(done.returncode, "killed")
    return status, time.monotonic() - start, tail[-1] if tail else ""


def expand(modules: list[str]) -> list[Path]:
    out = []
    for name in modules:
        p = (ROOT / name).resolve()
        out.extend(sorted(p.glob("*.py")) if p.is_dir() else [p])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", required=True, help="a module or a folder of modules to mutate")
    ap.add_argument("--tests", action="append", required=True, help="pytest arguments (files, -k ...), repeatable")
    ap.add_argument("--sample", type=int, default=20, help="how many mutants to draw (all when larger)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant; past it the mutant is killed")
    ap.add_argument("--timeout-factor", type=float, default=3.0,
                    help="the timeout is at least this many times the unmutated run (a loaded machine is slower)")
    ap.add_argument("--baseline-timeout", type=float, default=900.0, help="seconds for the unmutated runs")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--list", action="store_true", help="print the sample and exit")
    ap.add_argument("--only", nargs="*", help="run only these mutant ids")
    args = ap.parse_args(argv)

    candidates = [m for path in expand(args.module) for m in mutants_of(path)]
    rng = random.Random(args.seed)
    sample = candidates if args.sample >= len(candidates) else rng.sample(candidates, args.sample)
    sample.sort(key=lambda m: (m.path, m.line, m.col, m.kind))
    if args.only:
        sample = [m for m in candidates if m.id in set(args.only)]
    print(f"{len(candidates)} candidate mutants, {len(sample)} sampled (seed {args.seed})", flush=True)
    if args.list:
        for m in sample:
            print(f"{m.id}\t{m.old!r} -> {m.new!r}")
        return 0

    def interrupted(*_):
        raise KeyboardInterrupt  # so the running tests are stopped and the temporary copy is removed

    signal.signal(signal.SIGTERM, interrupted)
    results = []
    with tempfile.TemporaryDirectory(prefix="extagg-mutants-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(ROOT, root, ignore=IGNORED)
        status, secs, tail = run_tests(root, args.tests, args.baseline_timeout)
        print(f"baseline: {status} in {secs:.0f} s ({tail})", flush=True)
        if status != "survived":
            print("the unmutated tests do not pass; no mutants run", file=sys.stderr)
            return 2
        timeout = max(args.timeout, args.timeout_factor * secs)
        print(f"timeout per mutant: {timeout:.0f} s", flush=True)
        for i, m in enumerate(sample, 1):
            target, original = apply(m, root)
            try:
                status, secs, tail = run_tests(root, args.tests, timeout)
            finally:
                target.write_text(original)
            results.append(dict(id=m.id, old=m.old, new=m.new, status=status, seconds=round(secs, 1), tail=tail))
            print(f"[{i}/{len(sample)}] {status:8s} {secs:5.0f} s  {m.id}  {m.old!r} -> {m.new!r}  ({tail})",
                  flush=True)
        # kills are only meaningful if the unmutated tests still pass (an installed plugin may have changed)
        status, secs, tail = run_tests(root, args.tests, args.baseline_timeout)
        print(f"baseline again: {status} in {secs:.0f} s ({tail})", flush=True)
        if status != "survived":
            print("the unmutated tests no longer pass: the kills above are not reliable", file=sys.stderr)
            return 2
    caught = sum(r["status"] in ("killed", "timeout") for r in results)
    survivors = [r for r in results if r["status"] == "survived"]
    timed_out = sum(r["status"] == "timeout" for r in results)
    print(f"\n{caught} of {len(results)} mutants caught ({timed_out} of them by the timeout); "
          f"{len(survivors)} survived:")
    for r in survivors:
        print(f"  {r['id']}  {r['old']!r} -> {r['new']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(seed=args.seed, sample=args.sample, tests=args.tests,
                                                   results=results), indent=1))
    return 1 if survivors or any(r["status"] == "no-tests" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
