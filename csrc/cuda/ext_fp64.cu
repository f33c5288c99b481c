// Pointwise step kernels of the regularised cells (ext_step_kernel.cuh) for fp64 tensors: one dtype per file, so
// the build is parallel.
#include "ext_launcher.cuh"

namespace fastrnn::cuda {
FASTRNN_INSTANTIATE_EXT(DType::kDouble);
}  // namespace fastrnn::cuda
