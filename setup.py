"""Builds fastrnn and its one extension module, fastrnn._C.

Environment switches:
  FASTRNN_SKIP_CUDA=1   build the CPU kernels only, even where a CUDA toolkit is found.
  FASTRNN_FORCE_CUDA=1  build the CUDA kernels; fail if no toolkit is found.
  (neither)             build the CUDA kernels whenever a toolkit is found (CUDA_HOME or nvcc on PATH),
                        whether or not a GPU is visible: the build never asks torch.cuda.is_available().
  TORCH_CUDA_ARCH_LIST  GPU architectures, torch's syntax ("8.0;9.0+PTX"); when unset, the -gencode list of
                        csrc/cuda/cuda_archs.txt (SASS sm_80, sm_90, sm_100 and compute_90 PTX).
  FASTRNN_WERROR=1      treat compiler warnings in our sources as errors (CI's compile gate).
  MAX_JOBS              parallel compile jobs (ninja), as for every torch extension.
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_ARCHS_FILE = os.path.join(ROOT, "csrc", "cuda", "cuda_archs.txt")


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _default_gencode():
    """The -gencode flags of csrc/cuda/cuda_archs.txt (shared with CMakeLists.txt and tests/test_cuda_build.py)."""
    with open(CUDA_ARCHS_FILE) as f:
        values = [line.split("#", 1)[0].strip() for line in f]
    return [f"-gencode={v}" for v in values if v]


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _nvidia_wheel_includes():
    """Include dirs of the nvidia-* wheels torch installs: ATen's CUDA headers include cuBLAS, cuSPARSE and
    cuSOLVER headers that a bare toolkit (CUDA_HOME) does not ship."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include", "nvidia/*/include"):
            dirs.extend(sorted(glob.glob(os.path.join(entry, sub))))
    seen, out = set(), []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def _openmp_link_args():
    """Links the OpenMP runtime torch itself loads (torch/lib/libgomp.so.1 in the wheel), not the compiler's:
    both carry the soname libgomp.so.1, so the loader maps one runtime and fastrnn's parallel regions share
    torch's thread pool (tests/test_cpu_threads.py checks /proc/self/maps). Falls back to -fopenmp (the
    compiler's libgomp) for a torch without a bundled one (e.g. a distribution build linked to the system's)."""
    import torch

    bundled = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))
    return [bundled[0]] if bundled else ["-fopenmp"]


def _extension():
    from torch.utils import cpp_extension

    cuda_home = cpp_extension.CUDA_HOME
    use_cuda = not _flag("FASTRNN_SKIP_CUDA") and (cuda_home is not None or _flag("FASTRNN_FORCE_CUDA"))
    if _flag("FASTRNN_FORCE_CUDA") and cuda_home is None:
        raise RuntimeError("FASTRNN_FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
    # TORCH_CUDA_ARCH_LIST, when set, goes to torch's own flag generation; otherwise our -gencode list (with arch
    # flags among the nvcc flags, torch adds none of its own, and never probes for a GPU).
    arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else _default_gencode()

    werror = ["-Werror"] if _flag("FASTRNN_WERROR") else []
    # -Wmaybe-uninitialized: GCC 12 reports false positives inside std::optional<at::Tensor> and its own
    # avx512fintrin.h; -Wunknown-pragmas: `#pragma unroll` in ATen headers and our .cuh files.
    # -fopenmp: ATen's at::parallel_for is an inline template that runs in parallel only where _OPENMP is
    # defined (ATen/ParallelOpenMP.h, INTRA_OP_PARALLEL); without it every fastrnn parallel loop is serial.
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"] + werror
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra = {"cxx": cxx}
    if use_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        include_dirs += _nvidia_wheel_includes()
        define_macros.append(("FASTRNN_WITH_CUDA", None))
        extra["nvcc"] = [
            "-O3",
            "-std=c++20",
            "--use_fast_math" if _flag("FASTRNN_FAST_MATH") else "-prec-div=true",
            "-Xptxas=-v",  # the resource report (registers, spills) the ptxas gate reads from the build log
            "-Xcompiler=-fvisibility=hidden",
            "--expt-relaxed-constexpr",
        ] + arch_flags + (["-Werror=all-warnings", "-Xcompiler=-Wall,-Werror"] if werror else [])
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    return ext_cls(
        name="fastrnn._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=_openmp_link_args(),
        py_limited_api=False,
    )


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# Metadata, dependencies and the fastrnn-bench script are declared in pyproject.toml.
setup(ext_modules=[_extension()], cmdclass=_cmdclass())
