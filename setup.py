"""Build recipe for the C core (lmpack._core).

Everything else lives in pyproject.toml. The extension is compiled for the baseline ISA of
the target; the SIMD kernel files raise their own target with `#pragma GCC target`, and the
dispatch table picks among them at import time by CPU feature detection, so one wheel runs
everywhere and still uses AVX-512/AVX2/NEON where the CPU has them.
"""
import glob
import sys

from setuptools import Extension, setup

# Results are specified to the bit (ggml-exact Q8_0, thread-count-independent sums), so the compiler
# must not fuse a multiply and an add the code keeps apart: -ffp-contract=off says so explicitly
# (strict -std=c11 implies it on GCC, but not every compiler or -std does).
compile_args = ["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden", "-Wall",
                "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
link_args = []
if sys.platform != "win32":
    compile_args.append("-pthread")
    link_args.append("-pthread")

setup(
    ext_modules=[
        Extension(
            "lmpack._core",
            sources=sorted(glob.glob("csrc/*.c")),
            include_dirs=["csrc"],
            # every object is rebuilt when a header changes (tiling.h holds the float matmul loops)
            depends=sorted(glob.glob("csrc/*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
