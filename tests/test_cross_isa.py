"""Kernel tables this CPU cannot run, held to the scalar reference under emulation.

tests/c/table_vs_scalar.c checks one table against the scalar one (q8_0 bytes exact, matmuls
within a rounding bound, batch-size and row-split invariance). For the NEON table it is
cross-compiled with gcc-aarch64-linux-gnu and run under qemu-user; the x86 tables this machine
has are run natively through the same harness. Skips when the tools are not installed (.ci/run
installs them).
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "c" / "table_vs_scalar.c"


def build_and_run(cc: str, table: str, sources: list[str], out: Path, runner: list[str]) -> str:
    cmd = [cc, "-std=c11", "-O2", "-ffp-contract=off", "-I", str(ROOT / "csrc"), f"-DTABLE=lmp_kernels_{table}", str(HARNESS),
           *(str(ROOT / "csrc" / s) for s in sources), "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    p = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_neon_table_under_qemu(tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if platform.machine() == "aarch64":
        pytest.skip("native aarch64: the Python kernel tests run the NEON table directly")
    if not cc or not qemu:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    out = build_and_run(cc, "neon", ["kernels_scalar.c", "kernels_neon.c", "gemv_prefetch.c"], tmp_path / "neon",
                        [qemu, "-cpu", "max", "-L", "/usr/aarch64-linux-gnu"])
    assert out.strip().endswith("0 failed") and "neon:" in out


@pytest.mark.parametrize("table", ["avx2", "avx512"])
def test_x86_tables_through_the_same_harness(tmp_path, table):
    from lmpack import _core

    if table not in _core.kernel_paths():
        pytest.skip(f"this CPU cannot run {table}")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    out = build_and_run(cc, table, ["kernels_scalar.c", f"kernels_{table}.c", "gemv_prefetch.c"], tmp_path / table, [])
    assert out.strip().endswith("0 failed")
