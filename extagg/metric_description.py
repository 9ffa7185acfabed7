"""What ``extagg metrics`` and ``extagg describe METRIC`` print: a metric's contract in words."""
from __future__ import annotations


def describe_metric(registry, text: str) -> str:
    """A metric call's doc, reference, origin, parameters (with the values of this call), needs and measures
    (direction and range)."""
    from .evaluation.driver import parse_metric

    call = parse_metric(registry, text)
    m = call.metric
    lines = [f"metric: {call}", f"  {m.doc}"]
    if m.reference:
        lines.append(f"  reference: {m.reference}")
    lines.append(f"  from {m.origin}")
    values = call.kwargs
    for p in m.params:
        choices = f" (one of {', '.join(map(str, p.choices))})" if p.choices else ""
        lines.append(f"  parameter {p.name}={values.get(p.name, 'required')!s}: {p.type.__name__}{choices}; {p.doc}")
    if m.needs:
        lines.append(f"  needs: {', '.join(sorted(m.needs))}")
    if m.per_image:
        lines.append("  one image per batch")
    for measure in m.measures:
        lines.append(f"  measure {measure.name}: {measure.direction.value} is better, range [{measure.low:g}, "
                     f"{measure.high:g}]; {measure.doc}")
    return "\n".join(lines)


def metric_lines(registry, patterns=("*",)) -> list[str]:
    """One line per registered metric matching any fnmatch pattern: name, measures with directions, needs,
    parameters with defaults, origin."""
    import fnmatch

    out = []
    for name, m in registry.metrics.items():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        measures = ", ".join(f"{x.name} ({x.direction.value})" for x in m.measures)
        params = ", ".join(f"{p.name}={p.default}" if not p.required else p.name for p in m.params)
        needs = f"; needs {', '.join(sorted(m.needs))}" if m.needs else ""
        out.append(f"{name}({params})  measures: {measures}{needs}  [from {m.origin.plugin if m.origin else '?'}]")
    return out
