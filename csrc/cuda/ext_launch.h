// Host interface of the launchers of the regularised cells' pointwise step kernels (ext_step_kernel.cuh): what
// the ATen drivers lstm_ext_cuda.cpp / gru_ext_cuda.cpp (host compiler only) call. The launchers live in
// ext_<dtype>.cu, one storage dtype per file (ext_launcher.cuh), so that nvcc compiles them in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ext_params.h"
#include "launch.h"

namespace fastrnn::cuda {

// The launch configuration of a step of `bs` rows: grid_x = bs blocks (one per row), 256 threads, the block
// reductions' shared memory. The same for every kernel of ext_step_kernel.cuh.
template <DType D>
LaunchConfig ext_launch_config(int64_t bs);

// One launch on `stream`; a no-op when p.bs == 0 or the row width (H, or D for mix/split) is 0.
template <DType D>
void launch_lstm_ext_fwd(const LstmExtFwdParams& p, cudaStream_t stream);
template <DType D>
void launch_lstm_ext_bwd(const LstmExtBwdParams& p, cudaStream_t stream);
template <DType D>
void launch_gru_ext_fwd(const GruExtFwdParams& p, cudaStream_t stream);
template <DType D>
void launch_gru_ext_bwd(const GruExtBwdParams& p, cudaStream_t stream);
template <DType D>
void launch_ext_mix(const ExtMixParams& p, cudaStream_t stream);
template <DType D>
void launch_ext_split(const ExtSplitParams& p, cudaStream_t stream);

// The same, dispatched on the runtime dtype: host compiler only (the ATen drivers). Under nvcc these bodies
// would instantiate every dtype's kernels in every ext_<dtype>.cu.
#if !defined(__CUDACC__)
#define FASTRNN_EXT_DTYPE_SWITCH(D, F, ...)                         \
  switch (D) {                                                      \
    case DType::kFloat: return F<DType::kFloat>(__VA_ARGS__);       \
    case DType::kDouble: return F<DType::kDouble>(__VA_ARGS__);     \
    case DType::kHalf: return F<DType::kHalf>(__VA_ARGS__);         \
    case DType::kBFloat16: return F<DType::kBFloat16>(__VA_ARGS__); \
  }                                                                 \
  return F<DType::kFloat>(__VA_ARGS__)

inline LaunchConfig ext_launch_config(DType d, int64_t bs) { FASTRNN_EXT_DTYPE_SWITCH(d, ext_launch_config, bs); }
inline void launch_lstm_ext_fwd(DType d, const LstmExtFwdParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_lstm_ext_fwd, p, s);
}
inline void launch_lstm_ext_bwd(DType d, const LstmExtBwdParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_lstm_ext_bwd, p, s);
}
inline void launch_gru_ext_fwd(DType d, const GruExtFwdParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_gru_ext_fwd, p, s);
}
inline void launch_gru_ext_bwd(DType d, const GruExtBwdParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_gru_ext_bwd, p, s);
}
inline void launch_ext_mix(DType d, const ExtMixParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_ext_mix, p, s);
}
inline void launch_ext_split(DType d, const ExtSplitParams& p, cudaStream_t s) {
  FASTRNN_EXT_DTYPE_SWITCH(d, launch_ext_split, p, s);
}
#undef FASTRNN_EXT_DTYPE_SWITCH
#endif  // !__CUDACC__

}  // namespace fastrnn::cuda
