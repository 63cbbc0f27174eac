"""The architecture rules, checked at runtime: the engine pulls in no Qt, and the records module
(what widgets see) pulls in neither Qt nor torch. `lint-imports` checks the static contracts."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_engine_imports_no_qt():
    loaded = modules_after("import engine.engine, engine.cli, engine.loaders.gguf_file, engine.loaders.safetensors_dir")
    assert "torch" in loaded  # the import really happened
    assert not {m for m in loaded if m.split(".")[0] in ("PySide6", "pyqtgraph", "app", "widgets")}


def test_records_import_neither_torch_nor_qt():
    loaded = modules_after("import engine.records")
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "PySide6", "pyqtgraph")}


def test_import_contracts():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency: run scripts/setup.sh --test"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
