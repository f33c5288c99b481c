"""Self-tests of the CUDA emulation harness (tests/cuda_emu): kernels run on the CPU with g++, in three builds
(plain, ASan+UBSan, TSan); inputs come from Python, outputs are checked here against numpy / torch.

Also proves the harness catches the bugs it exists for: a missing __syncthreads (TSan data race), out-of-bounds
shared/global accesses (ASan / UBSan), and divergent barriers (the emulator's deadlock detector).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_BUILD_PY = Path(__file__).resolve().parent / "cuda_emu" / "build.py"
_spec = importlib.util.spec_from_file_location("cuda_emu_build", _BUILD_PY)
emu = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_emu_build", emu)
_spec.loader.exec_module(emu)

SRC = emu.EMU_DIR / "selftest_driver.cpp"
# One binary per variant serves both the clean self-tests and the bug demos (the demo kernels exist only under
# these macros; they run only when their case is asked for). Saves two compiles.
DEFINES = ("EMU_RACE_DEMO", "EMU_OOB_DEMO")
VARIANTS = ("plain", "asan", "tsan")
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module")
def binaries():
    support = {v: emu.sanitizer_support(v) for v in VARIANTS}
    usable = [v for v in VARIANTS if support[v][0]]
    exes = dict(zip(usable, emu.compile_many([(SRC, v, DEFINES) for v in usable])))
    return exes, support


def _need(binaries, variant):
    exes, support = binaries
    if variant not in exes:
        pytest.skip(f"{variant} unavailable: {support[variant][1]}")
    return exes[variant]


@pytest.fixture(params=VARIANTS)
def variant(request, binaries):
    _need(binaries, request.param)
    return request.param


def run(variant, case, inputs):
    return emu.run_driver(SRC, case, inputs, variant, DEFINES)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ emu_io
def test_emu_io_roundtrip(tmp_path):
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "d": np.linspace(0, 1, 5),
        "i": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "j": np.array([7], dtype=np.int32),
        "scalar": 5,
        "empty": np.zeros((0, 4), dtype=np.float64),
        "flag": np.array([True, False]),
    }
    emu.write_arrays(tmp_path / "a.bin", arrays)
    back = emu.read_arrays(tmp_path / "a.bin")
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        v = np.asarray(v)
        assert back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    assert back["f"].dtype == np.float32 and back["d"].dtype == np.float64
    assert back["scalar"].dtype == np.int64 and back["j"].dtype == np.int32 and back["flag"].dtype == np.int32


# ------------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_reduce(variant, dtype):
    block, blocks, n = 128, 3, 3000
    x = np.random.default_rng(1).standard_normal(n).astype(dtype)
    out = run(variant, "block_reduce", {"x": x, "blocks": blocks})
    owner = (np.arange(n) // block) % blocks  # grid-stride: element i is summed by block (i // 128) % blocks
    want = np.array([x[owner == b].astype(np.float64).sum() for b in range(blocks)])
    np.testing.assert_allclose(out["partial"], want, **_tol(dtype))
    np.testing.assert_array_equal(out["positives"], [(x[owner == b] > 0).sum() for b in range(blocks)])
    chunks = np.pad(x.astype(np.float64), (0, -n % block)).reshape(-1, block).sum(1)
    np.testing.assert_allclose(out["block_sums"], chunks, **_tol(dtype))
    assert out["partial"].dtype == dtype


def test_sync_votes(variant):
    block = 96  # three warps
    pred = np.zeros((4, block), dtype=np.int32)
    pred[0] = 1
    pred[2] = np.random.default_rng(2).integers(0, 2, block)
    pred[3, 95] = 1
    out = run(variant, "sync_votes", {"pred": pred.ravel(), "block": block})["votes"]
    want = np.stack([pred.sum(1), pred.all(1), pred.any(1)], 1)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_shuffles(variant, dtype):
    n, block = 256, 128
    x = np.random.default_rng(3).standard_normal(n).astype(dtype)
    x[:32] = np.abs(x[:32]) + 0.5  # warp 0: ballot all set
    x[32:64] = -np.abs(x[32:64]) - 0.5  # warp 1: ballot empty
    x[100] = 1000.0  # warp 3: any(x > 100)
    out = run(variant, "warp_ops", {"x": x, "block": block})
    w = x.astype(np.float64).reshape(-1, 32)
    tol = _tol(dtype)
    np.testing.assert_allclose(out["down"], w.sum(1), **tol)
    np.testing.assert_allclose(out["xsum"], np.repeat(w.sum(1), 32), **tol)
    np.testing.assert_allclose(out["scan"], np.cumsum(w, 1).ravel(), **tol)
    np.testing.assert_array_equal(out["bcast"], np.repeat(x.reshape(-1, 32)[:, 3], 32))
    np.testing.assert_allclose(out["seg"], np.repeat(w.reshape(-1, 8).sum(1), 8), **tol)
    bits = (x.reshape(-1, 32) > 0).astype(np.int64) << np.arange(32)
    np.testing.assert_array_equal(out["ballot"], bits.sum(1))
    assert out["ballot"][0] == 0xFFFFFFFF and out["ballot"][1] == 0
    np.testing.assert_array_equal(out["anyall"][:, 0], (x.reshape(-1, 32) > 100).any(1))
    np.testing.assert_array_equal(out["anyall"][:, 1], np.ones(n // 32))
    np.testing.assert_array_equal(out["iscan"], np.cumsum((np.arange(n) % 7).reshape(-1, 32), 1).ravel())


@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_shared_memory(variant, dtype):
    block, blocks = 96, 3  # then a 64-thread launch in the same process: fewer threads than the pool holds
    x = np.random.default_rng(4).standard_normal(block * blocks).astype(dtype)
    out = run(variant, "dyn_smem", {"x": x, "scale": np.array([2.5], dtype=dtype), "block": block})
    np.testing.assert_allclose(out["y"], x.reshape(blocks, block)[:, ::-1].ravel() * dtype(2.5), **_tol(dtype))
    np.testing.assert_array_equal(out["counts"], [block] * blocks)
    # never-written dynamic shared memory reads as the 0xFF poison: NaN
    assert out["probe"].dtype == dtype and np.isnan(out["probe"]).all()


def test_thread_and_block_indexing(variant):
    grid, block = (2, 3, 2), (8, 4, 2)
    out = run(variant, "indexing", {"grid": np.array(grid), "block": np.array(block)})["coords"]
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(d) for d in (*grid[::-1], *block[::-1])], indexing="ij")
    want = np.stack([tx, ty, tz, bx, by, bz], -1).reshape(-1, 6)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_atomics(variant, dtype):
    n, bins = 300, 7
    x = (np.random.default_rng(5).random(n) * 50 - 25).astype(dtype)
    out = run(variant, "atomics", {"x": x, "bins": bins})
    b = np.abs(x).astype(np.int64) % bins
    np.testing.assert_array_equal(out["hist"], np.bincount(b, minlength=bins))
    np.testing.assert_allclose(out["total"][0], x.astype(np.float64).sum(), rtol=1e-4 if dtype == np.float32 else 1e-12)
    assert out["maxbin"][0] == b.max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_math_in_a_kernel(variant, dtype):
    """csrc/cell_math.h compiled as device code, checked against torch's LSTM cell math."""
    torch = pytest.importorskip("torch")
    n = 100
    rng = np.random.default_rng(6)
    gates = (rng.standard_normal((n, 4)) * 3).astype(dtype)
    c_prev = rng.standard_normal(n).astype(dtype)
    out = run(variant, "lstm_pointwise", {"gates": gates, "c_prev": c_prev})
    g = torch.from_numpy(gates)
    i, f, gg, o = torch.sigmoid(g[:, 0]), torch.sigmoid(g[:, 1]), torch.tanh(g[:, 2]), torch.sigmoid(g[:, 3])
    c = f * torch.from_numpy(c_prev) + i * gg
    h = o * torch.tanh(c)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out["c"], c.numpy(), **tol)
    np.testing.assert_allclose(out["h"], h.numpy(), **tol)


def test_launch_limits(variant):
    out = run(variant, "limits", {})
    # 1025 threads, 2048 threads, z = 65, grid.y = 65536, 227 KiB + 1 of dynamic smem, empty grid: all rejected
    np.testing.assert_array_equal(out["rejected"], [1, 1, 1, 1, 1, 1])
    assert np.isnan(out["probe_at_limit"]).all()  # 1024 threads with 227 KiB ran


# ------------------------------------------------------------------------------------------------ bug detection
@pytest.mark.parametrize(
    "case, where",
    [
        ("deadlock_early_return", "returned from the kernel"),
        ("deadlock_mixed_barriers", "__shfl_xor_sync"),
    ],
)
def test_divergent_barrier_is_reported(binaries, case, where):
    exe = _need(binaries, "plain")
    proc, outputs = emu.run_raw(exe, case, {}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "30"}, timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "cuda_emu: FATAL: DEADLOCK" in proc.stderr, proc.stderr
    assert where in proc.stderr and "in __syncthreads" in proc.stderr, proc.stderr


def test_barrier_timeout_is_reported(binaries):
    exe = _need(binaries, "plain")
    proc, outputs = emu.run_raw(exe, "spin_forever", {}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "1"}, timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "barrier timeout after 1" in proc.stderr and "linear threads 0..0: running" in proc.stderr, proc.stderr
    assert "linear threads 1..31: in __syncthreads" in proc.stderr, proc.stderr


def test_shuffle_from_missing_lane_is_poison(variant):
    """Full-mask shuffles in a partial warp read lanes that do not exist (undefined in CUDA): the result is NaN."""
    x = np.ones(160, dtype=np.float32)
    sums = run(variant, "partial_warp_sum", {"x": x})["sums"]
    assert sums.shape == (2,) and np.isnan(sums).all()


@pytest.mark.parametrize(
    "case, kernel",
    [
        ("race_missing_sync", "block_reduce_missing_sync_kernel"),
        ("race_warp_synchronous", "warp_synchronous_reduce_kernel"),  # lockstep assumed without __syncwarp
        ("race_cross_warp", "block_sum_shfl_missing_sync_kernel"),  # shuffles order only their own warp
    ],
)
def test_missing_barrier_is_a_tsan_race(binaries, case, kernel):
    exe = _need(binaries, "tsan")
    x = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    proc, _ = emu.run_raw(exe, case, {"x": x}, "tsan")
    assert proc.returncode == 66, proc.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert kernel in proc.stderr  # the report points at the kernel


def test_run_driver_raises_on_a_sanitizer_report(binaries):
    _need(binaries, "tsan")
    x = np.ones(128, dtype=np.float32)
    with pytest.raises(emu.EmuRunError, match="ThreadSanitizer: data race"):
        run("tsan", "race_missing_sync", {"x": x})
    # the same buggy kernel "works" without TSan: the plain build alone would not have caught it
    assert run("plain", "race_missing_sync", {"x": x})["partial"].shape == (2,)


@pytest.mark.parametrize(
    "case, report",
    [
        ("oob_static_shared", "runtime error: index 64 out of bounds"),  # UBSan bounds check on the static array
        ("oob_dynamic_shared", "ERROR: AddressSanitizer: heap-buffer-overflow"),
        ("oob_global", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ],
)
def test_out_of_bounds_is_an_asan_report(binaries, case, report):
    exe = _need(binaries, "asan")
    proc, _ = emu.run_raw(exe, case, {"x": np.ones(128, dtype=np.float32)}, "asan")
    assert proc.returncode != 0, proc.stderr[-4000:]
    assert report in proc.stderr, proc.stderr[-4000:]
    assert "oob_" in proc.stderr  # the stack names the kernel
    assert emu.sanitizer_report(proc.stderr)


def test_clean_run_has_no_report_but_racy_run_would(binaries):
    """The report scanner used by run_driver() matches real sanitizer output and not ordinary stderr."""
    assert emu.sanitizer_report("WARNING: ThreadSanitizer: data race (pid=1)\n")
    assert emu.sanitizer_report("x.cpp:3:5: runtime error: index 64 out of bounds for type 'float [64]'")
    assert emu.sanitizer_report("==1==ERROR: AddressSanitizer: heap-buffer-overflow on address")
    assert not emu.sanitizer_report("case failed: emu_io: no array named 'x'\n")
