"""Build the two consumers of kcovx's C surfaces: cy_consumer (cimport) and c_consumer (capsule).

Run by tests/test_consumer.py in a subprocess, from a scratch copy of this folder:
``python setup.py build_ext --build-lib LIB --build-temp TMP``.  It builds against whichever
kcovx the interpreter imports (source tree on PYTHONPATH or an installed wheel): kcovx.h comes
from ``kcovx.get_include()`` and Cython finds kcovx's .pxd files on sys.path, as any third-party
consumer would.  It writes where kcovx was found to ``built_against.txt`` in LIB, so the test can
check it built against the kcovx it imports.  Never writes into the source tree.
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

import kcovx

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_lib(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--build-lib" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--build-lib="):
            return arg.split("=", 1)[1]
    return None


lib = _build_lib(sys.argv)
if lib is not None:
    os.makedirs(lib, exist_ok=True)
    with open(os.path.join(lib, "built_against.txt"), "w", encoding="utf-8") as f:
        f.write(os.path.dirname(os.path.abspath(kcovx.__file__)))

include = [kcovx.get_include()]

setup(
    name="kcovx-consumers",
    ext_modules=[
        *cythonize(
            [
                Extension(
                    "cy_consumer",
                    sources=[os.path.join(HERE, "cy_consumer.pyx")],
                    include_dirs=include,
                    extra_compile_args=["-O2"],
                )
            ],
            language_level=3,
            quiet=True,
        ),
        Extension(
            "c_consumer",
            sources=[os.path.join(HERE, "c_consumer.c")],
            include_dirs=include,
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Werror=implicit-function-declaration",
                "-Werror=incompatible-pointer-types",
            ],
        ),
    ],
)
