"""The native kernels' cache is trusted only where the user owns it: a library planted by someone else (in the
per-user temp folder, in a shared ``EXTAGG_CACHE_DIR``, beside a symbolic link, or a file others can write) never
runs, and a truncated or altered cached library is rebuilt instead of being loaded.

A planted library here has a constructor that writes a marker file when it is loaded. Builds use a stand-in
compiler that copies one real build of the kernels (made once per module), so no test compiles the kernels again.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from extagg import native

CC = shutil.which(os.environ.get("CC", "cc"))
pytestmark = pytest.mark.skipif(CC is None or not hasattr(os, "getuid"), reason="needs a C compiler and POSIX uids")
OTHER_UID = 65534  # "nobody"
PLANTED_C = textwrap.dedent("""
    #include <stdio.h>
    #include <stdlib.h>
    __attribute__((constructor)) static void planted(void) {
        const char *marker = getenv("EXTAGG_TEST_MARKER");
        FILE *f = marker ? fopen(marker, "w") : NULL;
        if (f) { fputs("planted code ran", f); fclose(f); }
    }
    int side_stats_f32(void) { return 0; }
    int side_stats_f64(void) { return 0; }
    int depthwise_stats_f32(void) { return 0; }
    int depthwise_stats_f64(void) { return 0; }
""")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """A planted library, one real build of the kernels, and a stand-in compiler that "builds" by copying it."""
    root = tmp_path_factory.mktemp("builds")
    (root / "planted.c").write_text(PLANTED_C)
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(root / "planted.so"), str(root / "planted.c")], check=True)
    real = root / "real.so"
    subprocess.run([CC, "-O1", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-o", str(real), str(native.SOURCE),
                    "-lm"], check=True)
    fake = root / "fakecc"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi
        while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then out="$2"; fi; shift; done
        sleep 0.2
        cp "{real}" "$out"
    """))
    fake.chmod(0o755)
    return {"planted": root / "planted.so", "cc": str(fake)}


@pytest.fixture
def victim(tmp_path, monkeypatch, builds):
    """A user whose home cache is empty but writable, with a temp folder of their own; a marker to detect planted
    code; where each cache folder is."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(mode=0o700)
    tmp.mkdir(mode=0o777)
    tmp.chmod(0o1777)  # like /tmp: shared, sticky
    monkeypatch.delenv("EXTAGG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp))
    marker = tmp_path / "planted-code-ran"
    monkeypatch.setenv("EXTAGG_TEST_MARKER", str(marker))
    return {"home": home / ".cache" / "extagg", "tmp": tmp / f"extagg-{os.getuid()}", "marker": marker,
            "names": [name for _, name in native.library_names(builds["cc"])], **builds}


def plant(folder: Path, victim, *, mode=0o755, owner=None, folder_mode=0o700):
    """Put the planted library under every expected name in ``folder``, with a matching checksum beside each."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in victim["names"]:
        target = folder / name
        shutil.copy(victim["planted"], target)
        target.with_name(name + ".sha256").write_text(native._digest(target) + "\n")
        for path in (target, target.with_name(name + ".sha256")):
            path.chmod(mode)
            if owner is not None:
                os.chown(path, owner, owner)
    folder.chmod(folder_mode)
    if owner is not None:
        os.chown(folder, owner, owner)


def load(victim):
    """Load the kernels as the victim would; the folder the loaded library came from (None for a private one)."""
    lib = native._load(victim["cc"])
    assert hasattr(lib, "side_stats_f64")
    folder = Path(lib._name).parent
    return folder if folder.exists() else None


def as_root():
    if os.geteuid() != 0:
        pytest.skip("making a folder owned by another user needs root")


def test_a_temp_folder_owned_by_another_user_is_ignored(victim):
    as_root()
    plant(victim["tmp"], victim, owner=OTHER_UID)
    assert load(victim) == victim["home"]
    assert not victim["marker"].exists()


def test_a_shared_cache_folder_is_refused(victim, monkeypatch):
    shared = victim["home"].parent.parent / "shared"
    plant(shared, victim, folder_mode=0o777)
    monkeypatch.setenv("EXTAGG_CACHE_DIR", str(shared))
    with pytest.warns(RuntimeWarning, match=r"no trusted cache folder.*writable by others \(mode 777\)"):
        assert load(victim) is None  # built in a private folder, removed once loaded
    assert not victim["marker"].exists()
    assert not list(Path(native.tempfile.tempdir).glob("extagg-native-*"))


def test_a_temp_folder_made_open_by_another_user_is_refused(victim, monkeypatch):
    as_root()
    blocker = victim["home"].parent.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the home cache cannot be made
    plant(victim["tmp"], victim, owner=OTHER_UID, folder_mode=0o777)
    with pytest.warns(RuntimeWarning, match=f"owned by uid {OTHER_UID}"):
        assert load(victim) is None
    assert not victim["marker"].exists()


def test_an_open_temp_folder_of_ones_own_is_refused(victim, monkeypatch):
    """The same without root: the victim's own temp folder left writable by everyone."""
    blocker = victim["home"].parent.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    plant(victim["tmp"], victim, folder_mode=0o777)
    with pytest.warns(RuntimeWarning, match="no trusted cache folder"):
        assert load(victim) is None
    assert not victim["marker"].exists()


def test_a_library_file_others_can_write_is_rebuilt(victim):
    plant(victim["home"], victim, mode=0o666)
    with pytest.warns(RuntimeWarning, match="failed verification.*writable by others"):
        assert load(victim) == victim["home"]
    assert not victim["marker"].exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt one is trusted from now on
        assert load(victim) == victim["home"]


def test_symbolic_links_are_refused(victim, monkeypatch):
    elsewhere = victim["home"].parent.parent / "elsewhere"
    plant(elsewhere, victim)
    victim["home"].parent.mkdir(parents=True)
    victim["home"].symlink_to(elsewhere)  # the cache folder is a link: passed over for the temp folder
    assert load(victim) == victim["tmp"]
    assert not victim["marker"].exists()
    victim["home"].unlink()
    victim["home"].mkdir(mode=0o700)
    for name in victim["names"]:  # the files are links
        (victim["home"] / name).symlink_to(elsewhere / name)
        (victim["home"] / (name + ".sha256")).symlink_to(elsewhere / (name + ".sha256"))
    with pytest.warns(RuntimeWarning, match="failed verification.*a symbolic link"):
        assert load(victim) == victim["home"]
    assert not victim["marker"].exists()


def test_a_library_without_its_recorded_checksum_is_rebuilt(victim):
    plant(victim["home"], victim)
    for name in victim["names"]:
        (victim["home"] / (name + ".sha256")).write_text("0" * 64 + "\n")
    with pytest.warns(RuntimeWarning, match="checksum .* differs"):
        assert load(victim) == victim["home"]
    assert not victim["marker"].exists()


def test_a_truncated_cached_library_is_rebuilt_not_a_crash(victim, builds):
    """The library is never loaded in this process (truncating a mapped file would crash the test run itself)."""
    victim["home"].mkdir(parents=True, mode=0o700)
    built = victim["home"] / victim["names"][0]
    shutil.copy(native.SOURCE.with_name("native_kernels.c"), built)  # placeholder bytes, replaced next
    fake_build = subprocess.run([victim["cc"], "-o", str(built)], capture_output=True)
    assert fake_build.returncode == 0
    built.with_name(built.name + ".sha256").write_text(native._digest(built) + "\n")
    assert native.verify(built) == ""                 # a good cached build...
    built.write_bytes(built.read_bytes()[:4096])      # ...then what a full disk or a killed copy leaves
    code = f"from extagg import native; lib = native._load({victim['cc']!r}); print(hasattr(lib, 'side_stats_f64'))"
    env = {**os.environ, "TMPDIR": native.tempfile.tempdir, "PYTHONWARNINGS": "always"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # not -7 (SIGBUS)
    assert done.stdout.split() == ["True"]
    assert "failed verification" in done.stderr
    assert native.verify(built) == ""


def test_a_long_first_build_is_announced(victim, monkeypatch, capfd):
    monkeypatch.setattr(native, "ANNOUNCE_AFTER", 0.01)
    load(victim)
    assert "compiling the native kernels once" in capfd.readouterr().err
    monkeypatch.setattr(native, "ANNOUNCE_AFTER", 5)
    shutil.rmtree(victim["home"])
    load(victim)
    assert "compiling" not in capfd.readouterr().err


def test_the_switch_is_per_thread():
    import threading
    seen = []
    with native.enabled(False):
        t = threading.Thread(target=lambda: seen.append(native._on()))
        t.start()
        t.join()
        assert not native._on()
    assert seen == [native._state["on"]]
