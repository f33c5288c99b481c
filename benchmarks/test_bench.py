"""fastrnn vs torch.nn under pytest-benchmark: one benchmark per (case, mode, dtype, implementation), grouped
by (case, mode, dtype) so the report puts torch.nn and fastrnn side by side. Every test asserts parity (the
tolerances of fastrnn.bench.TOLERANCE) before it times anything. The cases, modules, inputs and timed
callables all come from fastrnn.bench; see benchmarks/conftest.py for the options."""
import pytest
import torch

from fastrnn import bench

_parity = {}  # (case, mode, dtype, device) -> error message or None: checked once for both impls


def _check_parity(case, mode, dtype, device):
    key = (case.name, mode, dtype, device)
    if key not in _parity:
        ref, fast, inp, grad = bench.build_pair(case, device, bench.DTYPES[dtype])
        if mode == "inference":
            ref.eval(), fast.eval()
        try:
            bench.check_parity(ref, fast, inp, grad, mode, bench.DTYPES[dtype])
            _parity[key] = None
        except bench.ParityError as exc:
            _parity[key] = str(exc)
    return _parity[key]


def test_bench(benchmark, bench_run, request):
    case, mode, dtype, device, impl = bench_run
    failure = _check_parity(case, mode, dtype, device)
    assert failure is None, f"parity: fastrnn != torch.nn on {case.name} {mode} {dtype}: {failure}"

    ref, fast, inp, grad = bench.build_pair(case, device, bench.DTYPES[dtype])
    module = ref if impl == "torch.nn" else fast
    if mode == "inference":
        module.eval()
    call = bench.make_call(module, inp, grad, mode)
    if device == "cuda":
        def fn():
            torch.cuda.synchronize()
            call()
            torch.cuda.synchronize()
    else:
        fn = call

    benchmark.group = f"{case.name} {mode} {dtype}"
    benchmark.extra_info.update(case.shape(device), impl=impl, device=device,
                                threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=request.config.getoption("--fastrnn-rounds"), iterations=1, warmup_rounds=1)
