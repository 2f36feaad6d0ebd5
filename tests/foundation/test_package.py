"""The package surface: compiled core in use, light import, re-export-only __init__, CLI."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sutazai_hwopt
from sutazai_hwopt import cli

ROOT = Path(sutazai_hwopt.__file__).parent


def test_compiled_buildinfo_is_an_extension_module() -> None:
    """The compiled core is a real shared object, not a pure-Python fallback."""
    from sutazai_hwopt._native import buildinfo

    assert buildinfo.__file__.endswith(".so")
    assert buildinfo.is_compiled() is True
    assert isinstance(buildinfo.DEBUG_BUILD, bool)


def test_every_native_source_is_built() -> None:
    """Every _native/*.pyx of the source tree has a compiled module importable from the package."""
    sources = Path(__file__).resolve().parents[2] / "_native"
    if not sources.is_dir():
        pytest.skip("running from an installed wheel without the source tree")
    for pyx in sources.glob("*.pyx"):
        module = importlib.import_module(f"sutazai_hwopt._native.{pyx.stem}")
        assert module.__file__ is not None and module.__file__.endswith(".so"), pyx.stem


def test_every_native_module_has_a_stub() -> None:
    """Each compiled module ships a hand-written .pyi beside it."""
    for so in (ROOT / "_native").glob("*.so"):
        stub = so.with_name(so.name.split(".")[0] + ".pyi")
        assert stub.exists(), f"missing stub {stub.name}"


def test_init_only_reexports() -> None:
    """sutazai_hwopt/__init__.py defines no classes or functions except the lazy-import hooks."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    assert set(defined) <= {"__getattr__", "__dir__"}


def test_all_public_names_resolve() -> None:
    """Every name in __all__ can be imported from the package root."""
    for name in sutazai_hwopt.__all__:
        assert getattr(sutazai_hwopt, name) is not None, name


def test_unknown_attribute_raises_attribute_error() -> None:
    """A missing name is an AttributeError, as for any module."""
    with pytest.raises(AttributeError):
        sutazai_hwopt.NoSuchThing  # noqa: B018


def test_import_is_light_and_starts_no_thread() -> None:
    """A fresh `import sutazai_hwopt` pulls in no heavy dependency and starts no thread."""
    code = (
        "import sys, threading; import sutazai_hwopt; "
        "heavy = [m for m in ('sklearn', 'numpy', 'scipy', 'psutil', 'lz4', 'starlette') if m in sys.modules]; "
        "print(heavy, threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] 1"


def test_cli_version_and_help() -> None:
    """`python -m sutazai_hwopt --version` prints the version; --help lists the commands."""
    run = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and sutazai_hwopt.__version__ in run.stdout
    run = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "info" in run.stdout


def test_cli_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`sutazai-hwopt info --json` reports a compiled, non-debug build."""
    assert cli.main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["compiled"] is True
    assert facts["version"] == sutazai_hwopt.__version__


def test_cli_bad_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration error is reported on stderr with exit code 1, not a traceback."""
    (tmp_path / "hardware_optimization.json").write_text('{"max_cpu_usage": 500}')
    assert cli.main(["config", "--config", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ConfigError" in err and "max_cpu_usage" in err


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Running with no subcommand prints usage and exits 2."""
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_debug_build_switch(tmp_path: Path) -> None:
    """SUTAZAI_HWOPT_DEBUG=1 at build time yields a module that reports a debug build."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "setup.py").exists():
        pytest.skip("needs the source tree")
    pytest.importorskip("Cython")
    env = {**__import__("os").environ, "SUTAZAI_HWOPT_DEBUG": "1", "SUTAZAI_HWOPT_ONLY": "buildinfo"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=repo, env=env, check=True, capture_output=True,
    )
    built = next((tmp_path / "lib" / "sutazai_hwopt" / "_native").glob("buildinfo*.so"))
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('sutazai_hwopt._native.buildinfo', {str(built)!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.DEBUG_BUILD)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
