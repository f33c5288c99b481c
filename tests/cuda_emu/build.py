"""Build and run CUDA-emulation drivers (see README.md). Importable from pytest; no third-party imports needed
except numpy (torch tensors are accepted as inputs if torch is installed).

    from cuda_emu import build as emu           # with tests/ on sys.path
    out = emu.run_driver(emu.EMU_DIR / "selftest_driver.cpp", "block_reduce",
                         {"x": x, "blocks": np.int64(4)}, variant="tsan")

A driver is an executable `driver CASE IN_FILE OUT_FILE` (emu_io.h). Binaries are cached under
tests/cuda_emu/build/ keyed by a hash of the compiler, the flags, the driver source and every header under csrc/ and
tests/cuda_emu/, so editing a kernel rebuilds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

EMU_DIR = Path(__file__).resolve().parent
REPO = EMU_DIR.parents[1]
CSRC = REPO / "csrc"
BUILD_DIR = EMU_DIR / "build"

CXX = os.environ.get("CXX", "g++")
BASE_FLAGS = ["-std=c++20", "-O1", "-g", "-pthread", f"-I{CSRC}", f"-I{EMU_DIR}", "-DFASTRNN_CUDA_EMU"]
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "asan": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    "tsan": ["-fsanitize=thread"],
}
RUN_ENV: dict[str, dict[str, str]] = {
    "plain": {},
    "asan": {
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    },
    "tsan": {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"},
}
# Anything a sanitizer prints when it found something.
SANITIZER_REPORT = re.compile(
    r"(ERROR|WARNING): (AddressSanitizer|ThreadSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)"
    r"|runtime error:|SUMMARY: (AddressSanitizer|ThreadSanitizer|UndefinedBehaviorSanitizer)"
)
HEADER_SUFFIXES = (".h", ".hpp", ".cuh", ".inc")

_build_lock = threading.Lock()


# --------------------------------------------------------------------------------------------- emu_io format
_MAGIC = b"EMUIO001"
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i8"), 4: np.dtype("<i4")}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        arr = arr.astype(np.int64)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, object]) -> None:
    """Write named arrays (numpy, torch tensors, Python scalars) as float32/float64/int64/int32."""
    with open(path, "wb") as f:
        f.write(_MAGIC)
        f.write(struct.pack("<I", len(arrays)))
        for name, value in arrays.items():
            arr = _to_numpy(value)
            code = _CODES.get(arr.dtype.newbyteorder("="))
            if code is None:
                raise TypeError(f"array {name!r}: dtype {arr.dtype} not supported (float32/64, int32/64)")
            raw = name.encode()
            f.write(struct.pack("<I", len(raw)) + raw)
            f.write(struct.pack("<II", code, arr.ndim))
            f.write(struct.pack(f"<{arr.ndim}q", *arr.shape))
            data = arr.astype(_DTYPES[code], copy=False).tobytes()
            f.write(struct.pack("<Q", len(data)))
            f.write(data)


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if data[:8] != _MAGIC:
        raise ValueError(f"{path}: not an emu_io file")
    (count,) = struct.unpack_from("<I", data, 8)
    off, out = 12, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        name = data[off : off + n].decode()
        off += n
        code, ndim = struct.unpack_from("<II", data, off)
        off += 8
        shape = struct.unpack_from(f"<{ndim}q", data, off)
        off += 8 * ndim
        (nbytes,) = struct.unpack_from("<Q", data, off)
        off += 8
        out[name] = np.frombuffer(data, dtype=_DTYPES[code], count=nbytes // _DTYPES[code].itemsize,
                                  offset=off).reshape(shape).copy()
        off += nbytes
    return out


# --------------------------------------------------------------------------------------------- building
def _compiler_id() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # pragma: no cover
        return f"unavailable: {e}"


def _headers() -> list[Path]:
    files = []
    for root in (CSRC, EMU_DIR):
        for p in root.rglob("*"):
            if p.suffix in HEADER_SUFFIXES and p.is_file() and BUILD_DIR not in p.parents:
                files.append(p)
    return sorted(files)


def _key(source: Path, flags: list[str]) -> str:
    h = hashlib.sha256()
    h.update(_compiler_id().encode())
    h.update("\0".join(flags).encode())
    for p in [source, *_headers()]:
        h.update(str(p.relative_to(REPO) if REPO in p.parents else p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


class BuildError(RuntimeError):
    pass


class EmuRunError(RuntimeError):
    def __init__(self, msg: str, proc: subprocess.CompletedProcess):
        super().__init__(msg)
        self.proc = proc


def flags_for(variant: str, defines: Iterable[str] = ()) -> list[str]:
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {sorted(VARIANTS)}")
    return [*BASE_FLAGS, *VARIANTS[variant], *(f"-D{d}" for d in defines)]


def compile_driver(source: str | os.PathLike, variant: str = "plain", defines: Iterable[str] = (),
                   extra_flags: Iterable[str] = ()) -> Path:
    """Compile `source` (one .cpp) for `variant`; returns the cached binary."""
    source = Path(source).resolve()
    flags = [*flags_for(variant, defines), *extra_flags]
    key = _key(source, flags)
    # <stem>-<variant>-<flags hash>-<content hash>: older builds of the same prefix are pruned after a rebuild
    prefix = f"{source.stem}-{variant}-{hashlib.sha256(' '.join(flags).encode()).hexdigest()[:8]}-"
    exe = BUILD_DIR / f"{prefix}{key}"
    if exe.exists():
        return exe
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=exe.name + ".", suffix=".tmp", dir=BUILD_DIR)
    os.close(fd)
    cmd = [CXX, *flags, str(source), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"compile failed ({variant}): {' '.join(cmd)}\n{proc.stderr[-8000:]}")
    os.replace(tmp, exe)  # atomic: concurrent builders of the same key are harmless
    # Prune older builds of the same driver/flags, but only those built over an hour ago: a test session that compiled
    # its binary before someone edited a header under csrc/ (another session's rebuild) may still be running it.
    now = time.time()
    for stale in BUILD_DIR.glob(f"{prefix}*"):
        if stale != exe and not stale.name.endswith(".tmp") and now - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    return exe


def compile_many(jobs: Iterable[tuple], max_workers: int | None = None) -> list[Path]:
    """Compile several (source, variant[, defines]) in parallel (one job per core)."""
    jobs = list(jobs)
    workers = max_workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda j: compile_driver(*j), jobs))


def clean_cache() -> None:
    """Delete every cached binary."""
    if BUILD_DIR.exists():
        shutil.rmtree(BUILD_DIR)


# --------------------------------------------------------------------------------------------- running
def sanitizer_report(text: str) -> str | None:
    m = SANITIZER_REPORT.search(text)
    return text[max(0, m.start() - 200):] if m else None


def run_raw(exe: Path, case: str, inputs: Mapping[str, object], variant: str, env: Mapping[str, str] | None = None,
            timeout: float = 120.0) -> tuple[subprocess.CompletedProcess, dict[str, np.ndarray] | None]:
    """Run one case; returns the process and its outputs (None if the driver wrote none)."""
    with tempfile.TemporaryDirectory(prefix="emu-") as d:
        fin, fout = Path(d) / "in.bin", Path(d) / "out.bin"
        write_arrays(fin, inputs)
        full_env = {**os.environ, **RUN_ENV[variant], **(env or {})}
        proc = subprocess.run([str(exe), case, str(fin), str(fout)], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
        outputs = read_arrays(fout) if fout.exists() else None
    return proc, outputs


def run_driver(source: str | os.PathLike, case: str, inputs: Mapping[str, object], variant: str = "plain",
               defines: Iterable[str] = (), env: Mapping[str, str] | None = None,
               timeout: float = 120.0) -> dict[str, np.ndarray]:
    """Compile (cached), run one case, and insist on a clean run: exit 0 and no sanitizer report."""
    exe = compile_driver(source, variant, defines)
    proc, outputs = run_raw(exe, case, inputs, variant, env, timeout)
    report = sanitizer_report(proc.stderr)
    if proc.returncode != 0 or report or outputs is None:
        raise EmuRunError(
            f"{exe.name} {case} [{variant}] exited {proc.returncode}"
            f"{' with a sanitizer report' if report else ''}:\n{proc.stderr[-12000:]}",
            proc,
        )
    return outputs


def require_variant(variant: str) -> None:
    """pytest.skip() with the reason when `variant` cannot be built or run on this machine."""
    ok, why = sanitizer_support(variant)
    if not ok:
        import pytest

        pytest.skip(f"cuda_emu variant {variant!r} unavailable: {why}")


@functools.lru_cache(maxsize=None)
def sanitizer_support(variant: str) -> tuple[bool, str]:
    """Whether `variant` can compile and run a threaded hello world here; reason if not."""
    if variant == "plain":
        return True, ""
    src = (
        "#include <thread>\n#include <cstdio>\nint main(){int x=0; std::thread t([&]{x=1;}); t.join();"
        " std::printf(\"%d\\n\", x); return 0;}\n"
    )
    with tempfile.TemporaryDirectory(prefix="emu-probe-") as d:
        c, exe = Path(d) / "probe.cpp", Path(d) / "probe"
        c.write_text(src)
        proc = subprocess.run([CXX, *flags_for(variant), str(c), "-o", str(exe)], capture_output=True, text=True)
        if proc.returncode != 0:
            return False, f"{CXX} cannot build with {VARIANTS[variant]}: {proc.stderr.strip()[-500:]}"
        run = subprocess.run([str(exe)], capture_output=True, text=True, env={**os.environ, **RUN_ENV[variant]})
        if run.returncode != 0 or run.stdout.strip() != "1":
            return False, f"{variant} runtime does not work here: rc={run.returncode} {run.stderr.strip()[-500:]}"
    return True, ""
