"""The benchmark harness's parsing and reporting (benchmarks/report.py, benchmarks/ct2.py, the
option handling of benchmarks/bench_llamacpp.py, benchmarks/bench_gen.py end to end on a tiny
file): no timing checked, no llama.cpp or CTranslate2 needed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gen  # noqa: E402
import bench_llamacpp  # noqa: E402
import ct2  # noqa: E402
import report  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni amx_tile
processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2
"""


def test_cpu_name_and_flags_in_fixed_order():
    assert report.cpu_name(CPUINFO) == "AMD EPYC 9B45"
    assert report.cpu_flags(CPUINFO) == ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                         "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile"]
    assert report.cpu_flags("Features\t: fp asimd asimddp sve\n") == ["asimd", "asimddp"]
    assert report.cpu_name("") == "" and report.cpu_flags("") == []


def test_cmake_args_keeps_only_defines_and_honours_quotes():
    text = '-DGGML_NATIVE=OFF  -DGGML_AVX2=ON\n "-DCMAKE_C_FLAGS=-O3 -march=x86-64-v3" -G Ninja\n'
    assert report.cmake_args(text) == ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DCMAKE_C_FLAGS=-O3 -march=x86-64-v3"]
    assert report.cmake_args("") == []


def test_system_features_lists_what_is_on():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | AVX512_BF16 = 1 | OPENMP = 1 | "
    assert report.system_features(info) == ["SSE3", "AVX", "AVX512_BF16", "OPENMP"]


def test_ct2_log_parsing():
    log = """[info] CPU: AuthenticAMD (SSE4.1=true, AVX=true, AVX2=true, AVX512=true)
[info]  - Selected ISA: AVX2
[info]  - Use Intel MKL: false
[info]  - SGEMM backend: DNNL (packed: false)
[info]  - GEMM_S8 backend: DNNL (packed: false, u8s8 preferred: true)
[info]  - Selected compute type: int8_float32
onednn_verbose,info,cpu,isa:Intel AVX2
"""
    assert ct2.parse_log(log) == {"isa": "AVX2", "sgemm": "DNNL (packed: false)", "mkl": "false",
                                  "gemm_s8": "DNNL (packed: false, u8s8 preferred: true)",
                                  "compute_type": "int8_float32", "onednn_isa": "Intel AVX2"}
    assert ct2.parse_log("nothing") == {}


def test_ct2_isa_follows_the_table_unless_set():
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    got = ct2.force_isa("avx2", env)
    assert got == {"CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert ct2.force_isa("avx512", {})["CT2_FORCE_CPU_ISA"] == "AVX512"
    assert ct2.force_isa("scalar", {}) == {}


def test_percent_of_peaks_counts_two_ops_per_weight_per_token():
    row = {"shape": "tiny", "type": "q8_0", "test": "pp128", "lmpack": 1000.0, "ctranslate2": 500.0}
    peaks = {"avx512_vnni_int8": 100.0, "avx512_fma_f32": 50.0}
    out = report.percent_of_peaks(row, 10**8, peaks, 2, "avx512")
    assert out["lmpack_GOPs"] == pytest.approx(200.0)          # 1000 tok/s x 2 x 1e8 / 1e9
    assert out["lmpack_pct_avx512_vnni_int8"] == pytest.approx(100.0)  # 200 / (2 threads x 100)
    assert out["ctranslate2_pct_avx512_vnni_int8"] == pytest.approx(50.0)
    assert not any(k.startswith("llama.cpp") or k.endswith("fma_f32") for k in out)
    assert report.percent_of_peaks(dict(row, test="tg128"), 10**8, peaks, 2, "avx512") == {}
    assert report.percent_of_peaks(row, 10**8, peaks, 2, "avx2") == {"lmpack_GOPs": pytest.approx(200.0),
                                                                       "ctranslate2_GOPs": pytest.approx(100.0)}


def run_fixture() -> dict:
    return {"meta": {"cpu": "AMD EPYC", "cpus": 2, "cpu_flags": ["avx2", "avx512f"], "kernels": "avx512",
                     "threads": 2, "reps": 3, "activations": ["f32", "bf16"],
                     "llama_cpp": {"version": "0.3.36", "where": "/opt/lc", "cmake_args": ["-DGGML_NATIVE=ON"],
                                   "features": ["AVX512", "AVX512_BF16"]},
                     "ctranslate2": {"version": "4.8.5", "isa_env": {"CT2_FORCE_CPU_ISA": "AVX512"},
                                     "probe": {"q8_0": {"isa": "AVX512"}},
                                     "convert": {"tiny/q8_0": {"quantization": "int8", "seconds": 3.25,
                                                               "peak_rss_mib": 812.0}}},
                     "load_start": [1.0, 2.0, 3.0], "load_end": [1.5, 2.0, 3.0]},
            "read_bw": {"before": {"4k": 30.0, "huge": 40.0}, "after": {"4k": 31.0, "huge": 41.0}},
            "peaks": {"avx512_vnni_int8": 900.0},
            "results": [
                {"shape": "stories110m", "type": "q8_0", "test": "pp128", "activations": "f32", "lmpack": 2000.0,
                 "llama.cpp": 1000.0, "ctranslate2": 4000.0, "lmpack_pct_avx512_vnni_int8": 24.4,
                 "llama.cpp_pct_avx512_vnni_int8": 12.2, "load_before": 1.0, "load_after": 1.25},
                {"shape": "stories110m", "type": "q8_0", "test": "tg128", "activations": "bf16", "lmpack": 300.0,
                 "lmpack_GBs": 33.0, "ctranslate2": 100.0, "ctranslate2_GBs": 11.0},
            ]}


def test_markdown_table_cells():
    lines = report.markdown_table(run_fixture()).splitlines()
    assert lines[0].startswith("| model | type | act | test | lmpack tok/s | llama.cpp tok/s |")
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == ("| stories110M | q8_0 | f32 | pp128 | 2000.0 | 1000.0 | 2.00x | 4000.0 | 0.50x |  "
                        "| VNNI 24% / 12% / - | 1.00 -> 1.25 |")
    assert lines[3] == "| stories110M | q8_0 | bf16 | tg128 | 300.0 | - | - | 100.0 | 3.00x | 33.0 / - / 11.0 |  | - |"


def test_report_names_cpu_builds_isa_bandwidth_and_load():
    text = report.report(run_fixture(), "avx512")
    assert text.startswith("### kernel table avx512")
    for needle in ("AMD EPYC, 2 CPUs, flags: avx2 avx512f", "CMAKE_ARGS: -DGGML_NATIVE=ON", "compiled: AVX512 AVX512_BF16",
                   "CTranslate2 4.8.5 (CT2_FORCE_CPU_ISA=AVX512) for q8_0: isa AVX512",
                   "converter, tiny/q8_0 (int8): 3.2 s, peak RSS 812 MiB", "before 30.0 / 40.0, after 31.0 / 41.0",
                   "avx512_vnni_int8 900", "classifier included", "start 1.00 / 2.00 / 3.00 end 1.50",
                   "activations: f32, bf16"):
        assert needle in text, needle
    assert "warning" not in text
    busy = run_fixture()
    busy["results"][0]["load_after"] = 3.5
    assert "warning: the load average reached 3.50 on 2 CPUs" in report.report(busy)


def test_options_quick_and_selection():
    a = bench_llamacpp.parse_args(["--quick"])
    assert (a.shapes, a.types, a.reps, a.pp, a.tg) == (["stories110m"], ["q8_0"], 1, [128], 16)
    assert bench_llamacpp.selected_tests(a) == [("pp128", 128), ("tg16", 16)]
    a = bench_llamacpp.parse_args(["--quick", "--reps", "3", "--tests", "tg", "--tg", "64"])
    assert a.reps == 3 and bench_llamacpp.selected_tests(a) == [("tg64", 64)]
    a = bench_llamacpp.parse_args([])
    assert a.reps == 5 and bench_llamacpp.selected_tests(a) == [("pp128", 128), ("pp512", 512), ("tg128", 128)]
    with pytest.raises(SystemExit):
        bench_llamacpp.parse_args(["--reps", "0"])


def test_table_children_get_the_options_but_not_table_or_json():
    argv = ["--table", "avx2=/x", "--json=o.json", "--reps", "1", "--table=avx512", "--json", "p.json", "--no-ct2",
            "--markdown", "r.md"]
    assert bench_llamacpp.strip_table_args(argv) == ["--reps", "1", "--no-ct2"]


def test_bench_gen_times_every_variant_and_restores_the_active_ones(tiny_lmp, monkeypatch, capsys):
    from lmpack import _core

    table0, prefetch0 = _core.kernel_path(), _core._gemv_prefetch()
    tables = ",".join(dict.fromkeys(["scalar", table0]))
    monkeypatch.setattr(sys, "argv", ["bench_gen.py", str(tiny_lmp), "--tables", tables, "--prefetch", "none,amd",
                                      "--steps", "2", "--rounds", "2", "--bw-mib", "0", "--threads", "2"])
    bench_gen.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(tiny_lmp.name)]
    assert [(r[1], r[2]) for r in rows] == [(t, p) for t in tables.split(",") for p in ("none", "amd")]
    assert all(float(x) > 0 for r in rows for x in r[3:8])
    assert (_core.kernel_path(), _core._gemv_prefetch()) == (table0, prefetch0)


def test_bench_gen_refuses_unknown_names_before_loading(tiny_lmp, monkeypatch, capsys):
    from lmpack import _core

    table0, prefetch0 = _core.kernel_path(), _core._gemv_prefetch()
    for opt in (["--tables", "nope"], ["--prefetch", "nope"]):
        monkeypatch.setattr(sys, "argv", ["bench_gen.py", str(tiny_lmp), "--bw-mib", "0", *opt])
        with pytest.raises(SystemExit) as e:
            bench_gen.main()
        assert str(e.value).startswith("error: ") and "nope" in str(e.value)
        assert (_core.kernel_path(), _core._gemv_prefetch()) == (table0, prefetch0)
    assert tiny_lmp.name not in capsys.readouterr().out
