// Proves the CUDA half of the extension is linked: reports the CUDA runtime version.
#include <cuda_runtime.h>

#include "runtime_info.h"

namespace sparsedm {
int cuda_runtime_version() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) return -1;
  return version;
}
}  // namespace sparsedm
