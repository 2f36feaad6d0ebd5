"""Build the compiled cores: every ``_native/<name>.pyx`` becomes ``sutazai_hwopt._native.<name>``.

Compiler directives live here and only here. Environment switches:

* ``SUTAZAI_HWOPT_DEBUG=1`` — debug build: C asserts on (NDEBUG undefined), the
  ``SUTAZAI_HWOPT_DEBUG`` macro set for the cores' internal checks and counters, and Cython line tracing.
* ``SUTAZAI_HWOPT_ONLY=name1,name2`` — build only these modules (a developer's quick rebuild).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import Cython
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
NATIVE = HERE / "_native"
DEBUG = os.environ.get("SUTAZAI_HWOPT_DEBUG", "") not in ("", "0")
ONLY = {n for n in os.environ.get("SUTAZAI_HWOPT_ONLY", "").split(",") if n}

DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    "binding": True,
    "linetrace": DEBUG,
}


def native_extensions() -> list[Extension]:
    macros: list[tuple[str, str | None]] = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ("SUTAZAI_HWOPT_CYTHON_VERSION", f'"{Cython.__version__}"'),
    ]
    compile_args = ["-O3", "-fno-strict-aliasing"]
    undef: list[str] = []
    if DEBUG:
        macros += [("SUTAZAI_HWOPT_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        compile_args = ["-O1", "-g"]
        undef = ["NDEBUG"]
    else:
        macros += [("SUTAZAI_HWOPT_DEBUG", "0")]
    exts = []
    for pyx in sorted(NATIVE.glob("*.pyx")):
        name = pyx.stem
        if ONLY and name not in ONLY:
            continue
        exts.append(
            Extension(
                f"sutazai_hwopt._native.{name}",
                [str(pyx.relative_to(HERE))],
                include_dirs=[numpy.get_include(), str(NATIVE.relative_to(HERE))],
                define_macros=macros,
                undef_macros=undef,
                extra_compile_args=compile_args,
                libraries=["pthread"],
            )
        )
    return exts


MODE = "debug" if DEBUG else "release"


class BuildExtForMode(build_ext):
    """Rebuild everything when switching between a debug and a release build.

    The switch changes only compiler macros, not the sources, so setuptools would otherwise keep the modules
    of the other mode as up to date.
    """

    def run(self) -> None:
        stamp = Path(self.build_temp) / ".hwopt-build-mode"
        if (stamp.read_text() if stamp.exists() else None) != MODE:
            self.force = True
        super().run()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(MODE)


setup(
    cmdclass={"build_ext": BuildExtForMode},
    ext_modules=cythonize(
        native_extensions(),
        compiler_directives=DIRECTIVES,
        include_path=[str(NATIVE.relative_to(HERE))],
        nthreads=int(os.environ.get("SUTAZAI_HWOPT_BUILD_JOBS", "0")) or 0,
        force=DEBUG,
    ),
    zip_safe=False,
)
