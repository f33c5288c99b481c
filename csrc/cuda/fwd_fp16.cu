// fwd step kernels (LSTM, GRU, RNN) for fp16 tensors: one instantiation set per file, so the build is parallel.
#include "launcher.cuh"

namespace fastrnn::cuda {
FASTRNN_INSTANTIATE_FWD(DType::kHalf);
}  // namespace fastrnn::cuda
