// Persistent backward kernels (LSTM, GRU, RNN) for bf16 tensors: one instantiation set per file, so the build is parallel.
#include "persistent_bwd_launcher.cuh"

namespace fastrnn::cuda {
FASTRNN_INSTANTIATE_PERSISTENT_BWD(DType::kBFloat16);
}  // namespace fastrnn::cuda
