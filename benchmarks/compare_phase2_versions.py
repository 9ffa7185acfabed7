import sys, time, torch, torchvision
import extagg
from extagg import engine
side = sys.argv[1]
torch.manual_seed(0); torch.set_num_threads(1)
model = torchvision.models.resnet50(weights=None).eval()
for p in model.parameters(): p.requires_grad_(False)
x = torch.randn(1, 3, 224, 224)
layers = ["layer1", "layer2", "layer3", "layer4"]
reg = extagg.default_registry()
methods = [reg.parse(m) for m in extagg.methods()]
mods = dict(model.named_modules())
def fit(m, l):
    a = reg.extractors[m.extractor.name].applies_to
    return a is None or isinstance(mods[l], a)
needs = {l: {"output", "grad", "input"} for l in layers}
if side == "base":
    captures, _, _ = engine.run_pass(model, x, needs, 281, None)
    from extagg.aggregate import LayerEvaluator
    def phase2():
        plans = reg.memo("plans")
        for l in layers:
            ev = LayerEvaluator(reg, captures[l], plans=plans)
            by = {}
            for m in methods:
                if fit(m, l): by.setdefault(m.extractor, []).append(m)
            for e, ms in by.items():
                ev.prefetch(e, ms)
                for m in ms: ev.map(m)
                ev.release(e)
else:
    captures, _, _ = engine.run_pass(model, x, needs, torch.tensor([[281]]), None)
    from extagg.phase2 import evaluate_layer
    def phase2():
        plans = reg.memo("plans")
        for l in layers:
            evaluate_layer(reg, captures[l], [m for m in methods if fit(m, l)], plans=plans)
ts = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter(); phase2(); ts.append(time.perf_counter() - t0)
ts = sorted(ts[1:])
print(side, "min %.1f ms, median %.1f ms" % (ts[0] * 1e3, ts[len(ts)//2] * 1e3))
