// Pointwise step kernels for any processor: at::vec's portable (compiler-vectorised) implementation.
#define FASTRNN_ISA_NS isa_default
#include "pointwise_impl.h"
