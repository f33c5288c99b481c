"""pytest-benchmark suite: fastrnn vs torch.nn on the cases of fastrnn.bench (not duplicated here).

    pytest benchmarks --benchmark-only                               # every case, mode, dtype
    pytest benchmarks --benchmark-only -k 'lstm-default and float32' # a subset (pytest -k on the ids)
    pytest benchmarks --benchmark-only --fastrnn-device cpu --fastrnn-dtype float32 --fastrnn-quick
    pytest benchmarks --benchmark-disable                            # parity + one call each, no timing

Without --benchmark-only / --benchmark-disable / --benchmark-enable the tests are skipped, so a plain `pytest`
that wanders in here stays quick (and the default testpaths, tests/, do not include benchmarks/ anyway).
"""
import pytest
import torch


def pytest_addoption(parser):
    g = parser.getgroup("fastrnn benchmarks")
    g.addoption("--fastrnn-device", default=None, choices=("cpu", "cuda"),
                help="device to benchmark on (default: cuda if available, else cpu)")
    g.addoption("--fastrnn-dtype", default=None,
                help="comma list of dtypes (default: float32,bfloat16 on cpu; float32,float16,bfloat16 on cuda)")
    g.addoption("--fastrnn-cases", default=None, help="comma list of case names or globs, as fastrnn.bench --cases")
    g.addoption("--fastrnn-quick", action="store_true",
                help="only the cases of fastrnn.bench --quick (default, b1, long), unless --fastrnn-cases")
    g.addoption("--fastrnn-rounds", type=int, default=5, help="timed rounds per benchmark (default 5)")


def _device(config):
    return config.getoption("--fastrnn-device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    if "bench_run" not in metafunc.fixturenames:
        return
    from fastrnn import bench

    config = metafunc.config
    device = _device(config)
    spec = config.getoption("--fastrnn-dtype")
    dtypes = [d.strip() for d in spec.split(",")] if spec else list(bench.DEVICE_DTYPES[device])
    runs, ids = [], []
    spec = config.getoption("--fastrnn-cases")
    cases = bench.quick_cases() if config.getoption("--fastrnn-quick") and not spec else bench.select_cases(spec)
    for case in cases:
        for mode in bench.MODES:
            for dtype in dtypes:
                for impl in ("torch.nn", "fastrnn"):
                    runs.append((case, mode, dtype, device, impl))
                    ids.append(f"{case.name}-{mode}-{dtype}-{impl}")
    metafunc.parametrize("bench_run", runs, ids=ids)


def pytest_collection_modifyitems(config, items):
    timing = any(config.getoption(opt, default=False)
                 for opt in ("benchmark_only", "benchmark_disable", "benchmark_enable"))
    if timing:
        return
    skip = pytest.mark.skip(reason="benchmarks run with `pytest benchmarks --benchmark-only` "
                                   "(or --benchmark-disable for parity + one call each)")
    for item in items:
        if "bench_run" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
