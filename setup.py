"""Build the compiled core of kcovx and its native runtime.

Two artifacts:

- ``kcovx/sancov/libkcovx_rt.so`` (soname ``libkcovx_rt.so``): the sanitizer-coverage
  runtime, plain C with no Python dependency, built from ``kcovx/sancov/kcovx_rt.c``.  It owns
  the recording state (``kcovx/kcovx_rt.h``).
- ``kcovx/sancov/kcovx_dso.o``: a stub every instrumented object links (its destructor tells
  the runtime the object is unloaded).
- ``kcovx.pth``: the start hook of child processes (``kcovx.children``), copied by ``build_py``
  to the top of the build, so that it lands in site-packages (where only ``.pth`` files are
  read at interpreter start): one ``import`` line that does nothing unless ``KCOVX_CHILD`` is
  set.  It goes into wheels and, through MANIFEST.in, sdists.
- ``kcovx._area``: the Cython core, linked against the runtime with the rpath
  ``$ORIGIN/sancov``, so ``import kcovx`` loads it and instrumented objects bind to the same copy.

Neither may be instrumented: a user who builds with ``CFLAGS="$(kcovx cflags)"
LDFLAGS="$(kcovx ldflags)"`` in the environment must still get a runtime whose hooks do not
call hooks, and a core that does not link against some other kcovx's runtime.  So every
``-fsanitize*`` flag and every flag naming a kcovx runtime is dropped from the compiler and
linker command lines of both.

Compiler directives are explicit here, not left to defaults: boundscheck and wraparound stay
on project-wide (the core turns nothing off globally; clipping is explicit code), cdivision is
on because every division in the core is by a non-zero constant.  kcovx/kcovx.h is the public
header (get_include()); kcovx/kcovx_rt.h is shared by the core and the runtime only.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_SONAME = "libkcovx_rt.so"
RUNTIME_SOURCE = "kcovx/sancov/kcovx_rt.c"
# Linked into every instrumented object (kcovx.sancov.link_args): tells the runtime of dlclose.
DSO_STUB_SOURCE = "kcovx/sancov/kcovx_dso.c"
DSO_STUB_OBJECT = "kcovx_dso.o"
# The start hook of child processes, installed at the top of site-packages.
START_PTH = "kcovx.pth"


def _kept(flag):
    """Whether a flag from the user's CFLAGS/LDFLAGS may reach kcovx's own objects."""
    return not (
        flag.startswith("-fsanitize")
        or "kcovx_rt" in flag
        or "/kcovx/sancov" in flag
        or flag in ("-Wl,--push-state,--no-as-needed", "-Wl,--pop-state")
    )


class BuildExt(build_ext):
    """build_ext that first builds the runtime library next to where kcovx._area goes."""

    def build_extensions(self):
        for attr in ("compiler_so", "compiler_so_cxx", "linker_so", "linker_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if isinstance(cmd, list):
                setattr(self.compiler, attr, [f for f in cmd if _kept(f)])
        area_path = self.get_ext_fullpath("kcovx._area")
        lib_dir = os.path.join(os.path.dirname(area_path), "sancov")
        os.makedirs(lib_dir, exist_ok=True)
        runtime = os.path.join(lib_dir, RUNTIME_SONAME)
        objects = self.compiler.compile(
            [RUNTIME_SOURCE],
            output_dir=self.build_temp,
            include_dirs=[os.path.join(HERE, "kcovx")],
            extra_postargs=[
                "-O2",
                "-fPIC",
                "-fvisibility=hidden",
                "-ftls-model=initial-exec",
                # its own exported data (the collecting flag) read directly, not through the GOT
                "-fno-semantic-interposition",
                "-fno-strict-aliasing",
            ],
        )
        self.compiler.link_shared_object(
            objects,
            runtime,
            libraries=["pthread"],
            extra_postargs=[f"-Wl,-soname,{RUNTIME_SONAME}", "-Wl,-z,nodelete"],
        )
        (stub,) = self.compiler.compile(
            [DSO_STUB_SOURCE],
            output_dir=self.build_temp,
            extra_postargs=["-O2", "-fPIC", "-fvisibility=hidden", "-g0"],  # adds no DWARF
        )
        self.copy_file(stub, os.path.join(lib_dir, DSO_STUB_OBJECT))
        for ext in self.extensions:
            if ext.name == "kcovx._area":
                ext.extra_objects = [runtime]
        super().build_extensions()


class BuildPy(build_py):
    """build_py that also puts kcovx.pth at the top of the build (site-packages once installed)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, START_PTH), os.path.join(self.build_lib, START_PTH))

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, START_PTH)]


extensions = [
    Extension(
        "kcovx._area",
        sources=["kcovx/_area.pyx"],
        include_dirs=[os.path.join(HERE, "kcovx")],
        # kcovx_rt.h is private to the core and the runtime
        define_macros=[("KCOVX_BUILDING_CORE", "1")],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
        # the runtime is found next to the core whatever the install location
        extra_link_args=["-Wl,-rpath,$ORIGIN/sancov"],
    )
]

setup(
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
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
