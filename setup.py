"""Build the compiled core of kcovx.

Compiler directives are explicit here, not left to defaults: boundscheck and wraparound stay
on project-wide (the core turns nothing off globally; clipping is explicit code), cdivision is
on because every division in the core is by a non-zero constant.  kcovx/kcovx.h and
kcovx/kcovx_tls.h are the core's headers; both ship with the package (get_include()).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

extensions = [
    Extension(
        "kcovx._area",
        sources=["kcovx/_area.pyx"],
        include_dirs=[os.path.join(HERE, "kcovx")],
        # kcovx_tls.h defines the core's thread-local state and refuses any other includer
        define_macros=[("KCOVX_BUILDING_CORE", "1")],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "binding": True,
            "boundscheck": True,
            "wraparound": True,
            "cdivision": True,
            "initializedcheck": True,
            "embedsignature": True,
            "always_allow_keywords": False,
        },
    ),
)
