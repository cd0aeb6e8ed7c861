#pragma once
namespace sparsedm {
// cudaRuntimeGetVersion() of the runtime this extension linked against (e.g. 13000).
int cuda_runtime_version();
}  // namespace sparsedm
