// Compile-only check of the device wrappers of csrc/cuda/device_compat.h under nvcc (sm_80, sm_90, -Werror):
// tests/test_cuda_emu_harness.py::test_device_compat_wrappers_compile_with_nvcc builds this file to a cubin and
// requires the tensor-core (HMMA), cp.async (LDGSTS) and acquire/release instructions in its SASS. Not part of
// the extension; the emulation runs the same wrappers in selftest_kernels.cuh.
#include <cstdint>

#include "cuda/device_compat.h"

extern "C" __global__ void fastrnn_device_compat_check(const float* __restrict__ x, float* __restrict__ y,
                                                       unsigned* __restrict__ flags) {
  __shared__ __align__(16) float tile[4 * 32];
  const int lane = threadIdx.x % 32;
  fastrnn::cp_async_ca<4>(&tile[lane], &x[lane]);
  fastrnn::cp_async_ca<8>(&tile[32 + 2 * (lane / 2)], &x[32 + 2 * (lane / 2)]);
  fastrnn::cp_async_cg16(&tile[64 + 4 * (lane / 4)], &x[64 + 4 * (lane / 4)]);
  fastrnn::cp_async_commit();
  fastrnn::cp_async_cg16_zfill(&tile[96 + 4 * (lane / 4)], &x[96 + 4 * (lane / 4)], lane % 17);
  fastrnn::cp_async_commit();
  fastrnn::cp_async_wait<1>();
  fastrnn::cp_async_wait<0>();
  fastrnn::cp_async_wait_all();
  __syncthreads();
  const std::uint32_t a[4] = {fastrnn::pack_bf16x2(__float2bfloat16_rn(tile[lane]), __float2bfloat16_rn(tile[32 + lane])),
                              fastrnn::pack_f16x2(__float2half_rn(tile[64 + lane]), __float2half_rn(tile[96 + lane])),
                              fastrnn::f32_to_tf32(tile[lane]), fastrnn::f32_to_tf32(tile[96 + lane])};
  const std::uint32_t b[2] = {a[1], a[0]};
  float c[4] = {tile[lane], 0.f, 1.f, 2.f}, d[4];
  fastrnn::mma_m16n8k16_bf16(d, a, b, c);
  fastrnn::mma_m16n8k16_f16(c, a, b, d);
  fastrnn::mma_m16n8k8_tf32(d, a, b, c);
  fastrnn::st_release(&flags[blockIdx.x], 1u);
  fastrnn::atomic_add_release(&flags[gridDim.x], 1u);
  fastrnn::atomic_add_release(reinterpret_cast<unsigned long long*>(flags + 2 * gridDim.x + 2), 1ull);
  fastrnn::grid_sync();
  const unsigned f = fastrnn::ld_acquire(&flags[(blockIdx.x + 1) % gridDim.x]);
  const auto g = fastrnn::ld_acquire(reinterpret_cast<const unsigned long long*>(flags + 2 * gridDim.x + 2));
  y[blockIdx.x * blockDim.x + threadIdx.x] = d[0] + d[1] + d[2] + d[3] + static_cast<float>(f) + static_cast<float>(g);
}
