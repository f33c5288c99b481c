// Host interface of the step-kernel launchers: what the ATen drivers (*_cuda.cpp, compiled by the host
// compiler, which never sees the device code or the half types) call. The launchers live in the .cu files,
// one storage dtype and one pass per file, so that nvcc compiles the instantiations in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "params.h"

namespace fastrnn::cuda {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Grid (x: hidden-unit tiles, y: batch-row tiles), threads per block and dynamic shared memory in bytes.
struct LaunchConfig {
  int64_t grid_x = 0, grid_y = 0, threads = 0, smem_bytes = 0;
};

// The launch configuration of one step of `bs` rows, and the launch itself on `stream` (a no-op when
// p.bs == 0 or p.H == 0). Instantiated for every DType in fwd_<dtype>.cu / bwd_<dtype>.cu.
template <DType D>
LaunchConfig fwd_launch_config(Cell cell, int64_t H, int64_t bs);
template <DType D>
void launch_fwd_step(Cell cell, const FwdStepParams& p, cudaStream_t stream);
template <DType D>
LaunchConfig bwd_launch_config(Cell cell, int64_t H, int64_t bs);
template <DType D>
void launch_bwd_step(Cell cell, const BwdStepParams& p, cudaStream_t stream);

// The persistent forward kernel (fwd_persistent_kernel.cuh) on the current device: units per block (0 when the
// kernel cannot run there: no cooperative launch, or no unit count whose grid is co-resident), grid, threads and
// dynamic shared memory. Instantiated for every DType in pfwd_<dtype>.cu.
// tf32 (float32 only): torch.backends.cudnn.allow_tf32 of the call; with it the tensor-core (TF32) kernel, without
// it the exact FMA kernel. bf16/fp16 always take the tensor-core kernel, float64 the FMA kernel; `mma` says which.
// directions: 1, or 2 for both directions of a bidirectional layer in one launch (grid rows, params.h FwdSeqLaunch):
// the plan then needs a co-resident grid of twice the blocks. grid: the blocks of one direction.
struct PersistentConfig {
  int units = 0;
  bool mma = false;
  int directions = 1;
  int64_t grid = 0, threads = 0, smem_bytes = 0;
};
template <DType D>
PersistentConfig fwd_persistent_config(Cell cell, int64_t H, int64_t K, bool tf32, int directions);
// One cooperative launch of the whole sequence (config.directions of them, a.dir[0..directions)); returns the
// launch's error (cudaErrorCooperativeLaunchTooLarge when the grid cannot be resident, e.g. under MPS or on a busy
// device) without raising, so that the caller can take the step kernels instead. a.dir[d].units must be
// config.units.
template <DType D>
cudaError_t launch_fwd_persistent(Cell cell, const FwdSeqLaunch& a, const PersistentConfig& config,
                                  cudaStream_t stream);

// The persistent backward kernels (bwd_persistent_kernel.cuh; tensor cores for bf16/fp16, and for float32 when tf32,
// where they fit; FMA otherwise): the configuration on the current device (units 0 when neither can run there; mma:
// which kernel) and one cooperative launch of the whole backward recurrence, returning the launch's error without
// raising. Instantiated for every DType in pbwd_<dtype>.cu.
template <DType D>
PersistentConfig bwd_persistent_config(Cell cell, int64_t H, bool tf32, int directions);
template <DType D>
cudaError_t launch_bwd_persistent(Cell cell, const BwdSeqLaunch& a, const PersistentConfig& config,
                                  cudaStream_t stream);

}  // namespace fastrnn::cuda
