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

