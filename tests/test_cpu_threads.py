"""fastrnn's CPU parallel loops really run in parallel: the extension is built with OpenMP (-fopenmp), so
ATen's inline at::parallel_for takes its OpenMP path (INTRA_OP_PARALLEL) inside fastrnn's own code, and it
shares torch's one OpenMP runtime (the wheel's libgomp) instead of loading a second one."""
import os
import re

import pytest
import torch

import fastrnn
import fastrnn._testing_ops  # noqa: F401  fakes of the test-only ops

_ops = torch.ops.fastrnn


def _openmp_runtimes():
    """Paths of the OpenMP runtimes mapped into this process (GNU libgomp, LLVM libomp, Intel libiomp5)."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    return sorted(p for p in paths if re.match(r"lib(gomp|omp|iomp5)([-.].*)?\.so", os.path.basename(p)))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_one_openmp_runtime_and_it_is_torchs():
    runtimes = _openmp_runtimes()
    assert len(runtimes) == 1, f"expected exactly one OpenMP runtime mapped, got {runtimes}"
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    bundled = [p for p in os.listdir(torch_lib) if p.startswith("libgomp")]
    if bundled:  # the wheel ships its own libgomp: fastrnn must use that one, not the compiler's
        assert os.path.dirname(os.path.realpath(runtimes[0])) == torch_lib, runtimes


def test_extension_calls_openmp():
    """_C references the OpenMP runtime (GOMP_parallel): built without -fopenmp it does not."""
    with open(fastrnn._C.__file__, "rb") as f:
        assert b"GOMP_parallel" in f.read(), "fastrnn._C was built without OpenMP: its parallel loops are serial"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2+ CPUs")
def test_row_loop_runs_on_several_threads():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
        # Two rows, each a whole task: one per thread. Serial loops (no OpenMP) would report 1.
        assert _ops._parallel_threads_used(2) == 2
        assert _ops._parallel_threads_used(64) == 2
        torch.set_num_threads(1)
        assert _ops._parallel_threads_used(64) == 1
    finally:
        torch.set_num_threads(old)


def test_parallel_threads_used_rejects_bad_rows():
    with pytest.raises(ValueError, match="rows must be positive"):
        _ops._parallel_threads_used(0)
