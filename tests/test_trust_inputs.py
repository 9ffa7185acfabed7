"""Bad input, a clear error; tiny inputs, bounded work: method-string bounds and the parse cache, kernel sizes
against the layer, stacked modifiers, and command-line user errors (an ``extagg: error:`` and exit code 2)."""
import pytest
import torch

import extagg
from extagg.cli import main
from extagg.errors import InputError, InvalidMethodError, MethodSyntaxError
from extagg.method import MAX_LENGTH, MAX_MODIFIERS, ParseCache, scan


def test_a_number_with_thousands_of_digits_is_a_syntax_error(registry):
    with pytest.raises(MethodSyntaxError, match="more than 30 digits"):
        registry.parse("iconv(k=" + "9" * 1000 + ")+sum")


def test_method_strings_have_a_documented_length_bound(registry):
    long = "scaling(" + ",".join(f"p{i}=1" for i in range(MAX_LENGTH)) + ")+sum"
    with pytest.raises(MethodSyntaxError, match=f"longer than the {MAX_LENGTH} accepted"):
        registry.parse(long)
    at_bound = "scaling+" + "+".join(["relu"] * ((MAX_LENGTH - 20) // 5)) + "+sum"
    assert len(at_bound) <= MAX_LENGTH
    assert registry.parse(at_bound).aggregator.name == "sum"


def test_many_parameters_parse_and_a_repeat_is_still_found():
    text = "x(" + ",".join(f"p{i}=1" for i in range(300)) + ",p7=2)"
    with pytest.raises(MethodSyntaxError, match="'p7' given twice"):
        scan(text)


def test_stacked_modifiers_are_capped(registry):
    ok = "meta:" * MAX_MODIFIERS + "normgrad"
    assert len(registry.parse(ok).modifiers) == MAX_MODIFIERS
    with pytest.raises(MethodSyntaxError, match=f"more than {MAX_MODIFIERS} modifiers"):
        registry.parse("meta:" * 32 + "normgrad")


def test_the_parse_cache_is_bounded_and_least_recently_used():
    cache = ParseCache(size=3)
    made = []
    for key in ["a", "b", "c", "a", "d"]:      # "a" used again before "d" arrives: "b" is the one dropped
        cache.get(key, lambda k: made.append(k) or k.upper())
    assert len(cache) == 3 and made == ["a", "b", "c", "d"]
    cache.get("b", lambda k: made.append(k) or k)
    assert made[-1] == "b"                    # "b" had been evicted: made again
    cache.get("a", lambda k: made.append(k) or k)
    assert made[-1] == "b"                    # "a" was kept


def test_the_default_registry_cache_does_not_grow_without_bound():
    reg = extagg.Registry(extagg.default_registry().components)
    assert reg._cache.size == 4096
    reg._cache.size = 50
    for i in range(80):
        reg.parse(f"iconv(k={2 * i + 1})+sum")
    assert len(reg._cache) == 50


@pytest.mark.parametrize("text, k", [("dwconv(k=33)+sum", 33), ("iconv(k=35)+sum", 35)])
def test_a_kernel_larger_than_the_map_is_refused(text, k):
    """On a 16x16 map a 31x31 patch reaches every location from every other; k = 33 only adds padding taps."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(InputError, match=rf"k={k}\) does not fit layer '0': its map is 16x16.*k <= 31"):
        extagg.saliency(net, x, text, "0", targets=0)
    extagg.saliency(net, x, "dwconv(k=31)+sum", "0", targets=0)   # the largest that means something
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    extagg.saliency(small, torch.randn(1, 3, 1, 1), "dwconv(k=5)+sum", "0", targets=0)  # small k: any map


def test_a_kernel_beyond_any_layer_is_refused_when_parsed(registry):
    with pytest.raises(InvalidMethodError, match="odd integer in 1..1023"):
        registry.parse("dwconv(k=4001)+sum")


# ----------------------------------------------------------------------------- the command line
def cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


EVALUATE = ["evaluate", "--metric", "pointing", "--data", "voc", "--root", "."]


@pytest.mark.parametrize("argv, message", [
    (["explain", "--alpha", "5"], "argument --alpha: expected a number in [0, 1]"),
    (["explain", "--alpha", "nan"], "argument --alpha"),
    ([*EVALUATE, "--tolerance", "nan"], "argument --tolerance"),
    ([*EVALUATE, "--tolerance", "-1"], "argument --tolerance"),
    ([*EVALUATE, "--device", "bogus"], "not a torch device"),
])
def test_argument_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_weights_are_an_extagg_error(capsys, tmp_path):
    junk = tmp_path / "weights.pt"
    junk.write_text("not a state dict")
    for weights, message in ((str(junk), "cannot load the weights"), ("NO_SUCH_WEIGHTS", "unknown SqueezeNet1_1")):
        code, err = cli(capsys, "explain", "--model", "squeezenet1_1", "--weights", weights)
        assert code == 2 and err.startswith(f"extagg: error: {message}") and "Traceback" not in err


def test_an_output_that_cannot_be_written_is_an_extagg_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["explain", "--model", "squeezenet1_1", "-o", str(tmp_path)])
    assert e.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_an_os_error_at_the_command_line_is_an_extagg_error(capsys, monkeypatch):
    import extagg.cli

    def full(args):
        raise OSError(28, "No space left on device", "/dev/full")
    monkeypatch.setattr(extagg.cli, "cmd_methods", full)
    code, err = cli(capsys, "methods")
    assert code == 2 and err == "extagg: error: '/dev/full' No space left on device\n"
