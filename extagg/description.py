"""Human-readable description of a method: composition, formulas, origins."""
from __future__ import annotations


def describe(registry, method) -> str:
    m = registry.parse(method)
    lines = [f"method: {m}"]
    if isinstance(method, str) and method.strip().lower() != str(m):
        lines.append(f"written: {method.strip()}")
    if m.named:
        alias = registry.named_methods[m.named]
        lines.append(f"named method: {alias.name} - {alias.doc} [{alias.reference}] (from {alias.origin})")

    def part(role, kind, call):
        spec = registry.components[kind][call.name]
        formula = f"  = {spec.formula}" if getattr(spec, "formula", "") else ""
        lines.append(f"  {role:<11} {str(call):<18} {spec.doc}{formula}  [from {spec.origin}]")

    for call in m.modifiers:
        part("modifier", "modifier", call)
    part("extractor", "extractor", m.extractor)
    for call in m.pre:
        part("pre-filter", "filter", call)
    part("aggregator", "aggregator", m.aggregator)
    for call in m.post:
        part("post-filter", "filter", call)
    agg = "(" + " o ".join(c.name for c in reversed(m.pre)) + ")" if m.pre else ""
    post = "".join(f"{c.name}(" for c in reversed(m.post))
    lines.append(f"map_u = {post}{m.aggregator.name}({agg}{'(' if agg else ''}c_u{')' if agg else ''})"
                 + ")" * len(m.post) + f", c_u from {m.extractor}")
    return "\n".join(lines)


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
