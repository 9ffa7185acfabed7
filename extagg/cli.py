"""Command line: ``extagg methods | metrics | plugins | describe | explain | evaluate | sweep | report``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_args import output_file
from .errors import ExtaggError


def _registry():
    from .registry import default_registry

    return default_registry()


def cmd_methods(args) -> int:
    """Named methods whose name matches (``name = expansion``, first), then the matching compositions."""
    import fnmatch

    reg = _registry()
    patterns, exclude = args.pattern or ["*"], args.exclude or ()
    names = reg.methods(patterns, exclude=exclude)

    def hit(text, pats):
        return any(fnmatch.fnmatchcase(text, p.strip().lower()) for p in pats)

    named = {n: str(reg.parse(n)) for n in reg.named_methods if hit(n, patterns)}
    named = {n: e for n, e in named.items() if not (hit(n, exclude) or hit(e, exclude))}
    width = max(map(len, named), default=0)
    for name, expansion in named.items():
        print(f"{name:<{width}} = {expansion}")
    for name in names:
        print(name)
    if not names and not named:
        print(f"no method matches {' '.join(patterns)}", file=sys.stderr)
        return 1
    return 0


def cmd_plugins(args) -> int:
    reg = _registry()
    by_plugin: dict[str, list[str]] = {}
    for kind, table in reg.components.items():
        for name, spec in table.items():
            by_plugin.setdefault(spec.origin.plugin, []).append(f"{kind} {name}")
    for failure in reg.failures:
        print(f"{failure.name}  [{failure.distribution or 'not from a distribution'}]  FAILED: {failure.error}")
    for info in reg.plugins:
        dist = f"{info.distribution} {info.version}" if info.distribution else "(not from a distribution)"
        print(f"{info.name}  [{dist}]  module {info.module}")
        for line in by_plugin.get(info.name, []) if args.components else []:
            print(f"    {line}")
        if not args.components:
            counts: dict[str, int] = {}
            for line in by_plugin.get(info.name, []):
                kind = line.split()[0]
                counts[kind] = counts.get(kind, 0) + 1
            print("    " + ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items()))
    return 0


def cmd_describe(args) -> int:
    reg = _registry()
    head = args.method.strip().split("(")[0].strip().lower()
    if head in reg.metrics:
        from .metric_description import describe_metric

        print(describe_metric(reg, args.method))
    else:
        print(reg.describe(args.method))
    return 0


def cmd_metrics(args) -> int:
    from .metric_description import metric_lines

    lines = metric_lines(_registry(), args.pattern or ["*"])
    for line in lines:
        print(line)
    if not lines:
        print(f"no metric matches {' '.join(args.pattern)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import build_report
    from .sweep.store import write_atomic

    text, counts = build_report(args.run_dir, registry=_registry())
    path = Path(args.output) if args.output else Path(args.run_dir) / "report.html"
    write_atomic(path, text)
    print(f"wrote {path}: {counts['rows']} result rows, {counts['thumbnails']} map thumbnails")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extagg", description="Extract & Aggregate saliency, composable.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("methods", help="named methods (name = expansion) and the design space (canonical strings)",
                       description="Named methods whose name matches a pattern, as 'name = expansion', then every "
                                   "composition whose canonical string matches ('grad*' finds gradcam, gradcampp, "
                                   "gradient, ...; a named method in a pattern matches its expansion).")
    s.add_argument("pattern", nargs="*", help="fnmatch patterns, e.g. 'grad*' 'scaling+*' '*+norm' (default: all)")
    s.add_argument("--exclude", "-x", action="append", help="fnmatch pattern to leave out (repeatable)")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("plugins", help="loaded plugins, their distributions, versions and components")
    s.add_argument("--components", "-c", action="store_true", help="list every component of each plugin")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("metrics", help="list the metrics: measures with their direction, needs, parameters")
    s.add_argument("pattern", nargs="*", help="fnmatch patterns over metric names (default: all)")
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("describe", help="composition, formula and origin of a method, or a metric's contract")
    s.add_argument("method")
    s.set_defaults(func=cmd_describe)

    from .explain_cli import add_explain_command

    add_explain_command(sub)

    try:
        from .evaluation.cli import add_evaluate_command
    except ImportError:
        pass
    else:
        add_evaluate_command(sub)
    from .sweep.cli import add_sweep_command

    add_sweep_command(sub)

    s = sub.add_parser("report", help="one self-contained offline HTML page of a sweep's run directory",
                       description="Write RUN_DIR/report.html: the results table (sortable, filterable, bootstrap "
                                   "intervals, floors), metric-vs-layer and ranking charts, the saved maps and the "
                                   "configuration; one file, no network.")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a sweep's run directory (extagg sweep -o RUN_DIR)")
    s.add_argument("-o", "--output", type=output_file, default=None, help="output HTML (default RUN_DIR/report.html)")
    s.set_defaults(func=cmd_report)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExtaggError as exc:
        print(f"extagg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a sweep's says what is saved), no traceback
        print(f"extagg: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `extagg methods | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # an output that cannot be written, an input that cannot be read
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"extagg: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
