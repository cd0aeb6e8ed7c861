"""Compile checks of the CUDA kernels without a GPU (DESIGN.md, "Testing without a GPU").

Every torch-free translation unit of csrc/cuda is compiled by nvcc for sm_80, sm_86 and sm_90
with ``-Xptxas -v``; ptxas must report no spills, and the SASS (cuobjdump from the triton
wheel) must hold the tensor-core instructions each family is meant to use. The torch glue
(csrc/cuda_ops.cpp) is syntax-checked against the installed torch headers. Nothing is cached
across runs; the per-arch register counts are printed (docs/KERNELS.md records them).
"""

import concurrent.futures as cf
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
NVCC = shutil.which("nvcc") or os.path.join(CUDA_HOME, "bin", "nvcc")
ARCHS = ("80", "86", "90")
# translation unit -> SASS patterns that must occur (verified against real cuobjdump output:
# HMMA.SP.16832.F32 / HMMA.SP.16832.F32.BF16, IMMA.SP.16864.S8.S8, IMMA.16832.S8.S8; LDGSTS =
# cp.async, the conv's gather).
TUS = {
    "sparse24_gemm_launch": (r"HMMA\.SP\.16832\.F32(?!\.BF16)", r"HMMA\.SP\.16832\.F32\.BF16"),
    "int8_gemm_launch": (r"IMMA\.SP\.16864\.S8\.S8", r"IMMA\.16832\.S8\.S8"),
    "relayout_launch": (),
    # implicit-GEMM 2:4 conv: {f16, bf16} x {large, small} tiles, one TU (compile time ~8 s/arch).
    "sparse24_conv_launch": (r"HMMA\.SP\.16832\.F32(?!\.BF16)", r"HMMA\.SP\.16832\.F32\.BF16", r"LDGSTS"),
}
# Kernel instantiations each TU must contain (demangled-name substrings -> count), so that a
# kernel dropped from a TU cannot pass the spill check by absence. Split-K (small M): one
# partial kernel per family (Small tile; raw sums, no output dtype) and one reduction per
# (accumulator, output dtype).
KERNELS = {
    "sparse24_gemm_launch": {"gemm_kernel<": 4, "gemm_partial_kernel<": 2, "split_k_reduce_kernel<float, false": 2},
    "int8_gemm_launch": {"gemm_kernel<": 12, "gemm_partial_kernel<": 2, "split_k_reduce_kernel<int, true": 3},
    "relayout_launch": {"relayout_weight_kernel<": 3, "relayout_meta_kernel<": 2, "quantize_rows_kernel<": 3},
    "sparse24_conv_launch": {"conv_kernel<": 4},
}
# Per-kernel SASS: the split-K partial kernels run the tensor-core main loop; the reduction
# kernels only add and run the epilogue (no mma at all).
KERNEL_SASS = {
    "gemm_partial_kernel<": r"HMMA\.SP\.16832|IMMA\.SP\.16864|IMMA\.16832",
}
KERNEL_SASS_ABSENT = {
    "split_k_reduce_kernel<": r"HMMA|IMMA",
}
# Every GEMM, split-K partial and conv kernel must run its own family's tensor-core instruction
# (the family is the first template argument of the demangled name): a tile or dtype
# instantiation that fell back to scalar code fails by itself, not only its file.
FAMILY_SASS = {
    "Sparse16<true>": r"HMMA\.SP\.16832\.F32\.BF16",
    "Sparse16<false>": r"HMMA\.SP\.16832\.F32(?!\.BF16)",
    "Sparse8": r"IMMA\.SP\.16864\.S8\.S8",
    "Dense8": r"IMMA\.16832\.S8\.S8",
}
MMA_KERNELS = ("gemm_kernel<", "gemm_partial_kernel<", "conv_kernel<")

pytestmark = pytest.mark.skipif(not os.path.exists(NVCC), reason="nvcc not found (set CUDA_HOME)")


def _cuobjdump():
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def _demangle(names):
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _ptxas_entries(log):
    """{demangled kernel name: (registers, spill stores, spill loads, stack bytes)} of a ptxas -v log."""
    blocks = re.findall(r"Compiling entry function '(\w+)' for '\w+'\n(.*?)(?=ptxas info    : Compiling|\Z)", log, re.S)
    names = _demangle([name for name, _ in blocks])
    entries = {}
    for name, body in blocks:
        regs = re.search(r"Used (\d+) registers", body)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", body)
        stack = re.search(r"(\d+) bytes stack frame", body)
        entries[names[name]] = (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1,
                                int(spill.group(2)) if spill else -1, int(stack.group(1)) if stack else -1)
    return entries


def _compile(tu, arch, out_dir):
    obj = os.path.join(out_dir, f"{tu}_sm{arch}.o")
    cmd = [NVCC, "-std=c++17", "-O3", f"-arch=sm_{arch}", "-Xptxas", "-v", "-I", f"{ROOT}/kernels/cuda",
           "-I", f"{ROOT}/csrc/cuda", "-c", f"{ROOT}/csrc/cuda/{tu}.cu", "-o", obj]
    res = subprocess.run(cmd, capture_output=True, text=True)
    return tu, arch, obj, res


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nvcc"))
    jobs = [(tu, arch) for tu in TUS for arch in ARCHS]
    # SPARSEDM_NVCC_JOBS: parallel nvcc runs (default: one per CPU; 1 on a shared machine).
    jobs_env = int(os.environ.get("SPARSEDM_NVCC_JOBS", "0") or 0)
    with cf.ThreadPoolExecutor(max_workers=jobs_env or os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda j: _compile(*j, out), jobs))
    return {(tu, arch): (obj, res) for tu, arch, obj, res in results}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tu", list(TUS))
def test_compiles_without_spills(compiled, tu, arch):
    obj, res = compiled[(tu, arch)]
    assert res.returncode == 0, res.stderr[-4000:]
    log = res.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills, "ptxas -v printed no spill report"
    bad = [s for s in spills if s != ("0", "0")]
    assert not bad, f"ptxas reports spills for {tu} sm_{arch}:\n{log}"
    entries = _ptxas_entries(log)
    for name, (regs, stores, loads, stack) in sorted(entries.items()):
        print(f"sm_{arch} {tu}: {regs} registers, {stores}/{loads} spill bytes, {stack} stack  {name[:110]}")
        assert (stores, loads) == (0, 0), f"{name} spills on sm_{arch}"
        assert stack == 0, f"{name} has a {stack}-byte stack frame on sm_{arch} (a call or local array)"
    for pattern, count in KERNELS[tu].items():
        found = [n for n in entries if pattern in n]
        assert len(found) == count, f"{tu} sm_{arch}: expected {count} kernels matching {pattern!r}, ptxas compiled {found}"


def _sass_functions(sass):
    """{demangled function name: its SASS text} of a cuobjdump -sass listing."""
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    names = _demangle(parts[1::2])
    return {names[n]: body for n, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tu", [t for t, pats in TUS.items() if pats])
def test_sass_uses_tensor_cores(compiled, tu, arch):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (it ships in the triton wheel)")
    obj, res = compiled[(tu, arch)]
    assert res.returncode == 0, res.stderr[-4000:]
    sass = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, check=True).stdout
    for pattern in TUS[tu]:
        assert re.search(pattern, sass), f"{tu} sm_{arch}: SASS has no {pattern}"
    functions = _sass_functions(sass)
    for kernel, pattern in KERNEL_SASS.items():
        names = [n for n in functions if kernel in n]
        assert len(names) == sum(c for k, c in KERNELS[tu].items() if k.startswith(kernel)), f"{tu}: {kernel} kernels {names}"
        for name in names:
            assert re.search(pattern, functions[name]), f"{name} sm_{arch}: SASS has no {pattern}"
    mma_kernels = [n for n in functions if any(k in n for k in MMA_KERNELS)]
    assert len(mma_kernels) == sum(c for k, c in KERNELS[tu].items() if k in MMA_KERNELS), f"{tu}: {mma_kernels}"
    for name in mma_kernels:
        families = [f for f in FAMILY_SASS if re.search(r"::" + re.escape(f) + r"(?![\w<])", name)]
        assert len(families) == 1, f"{name}: cannot tell its family"
        assert re.search(FAMILY_SASS[families[0]], functions[name]), (
            f"{name} sm_{arch}: SASS has no {FAMILY_SASS[families[0]]} (its family's tensor-core instruction)")
    for kernel, pattern in KERNEL_SASS_ABSENT.items():
        names = [n for n in functions if kernel in n]
        assert len(names) == sum(c for k, c in KERNELS[tu].items() if k.startswith(kernel)), f"{tu}: {kernel} kernels {names}"
        for name in names:
            assert not re.search(pattern, functions[name]), f"{name} sm_{arch}: SASS has {pattern} (it needs no mma)"


def test_every_launch_file_is_checked():
    """A new csrc/cuda/*_launch.cu cannot slip past the spill and SASS checks."""
    import glob

    launch = {os.path.basename(p)[: -len(".cu")] for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_launch.cu"))}
    assert launch == set(TUS) == set(KERNELS)


def test_torch_glue_syntax():
    """csrc/cuda_ops.cpp against this torch's headers (a CPU wheel lacks one generated c10/cuda
    header, stubbed here; the real build uses the CUDA wheel's)."""
    torch = pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    stub = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sparsedm_stub_{os.getpid()}")
    os.makedirs(os.path.join(stub, "c10", "cuda", "impl"), exist_ok=True)
    macros = os.path.join(stub, "c10", "cuda", "impl", "cuda_cmake_macros.h")
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in include_paths()):
        with open(macros, "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-DSPARSEDM_WITH_CUDA=1", "-I", stub, "-I", f"{CUDA_HOME}/include",
           "-I", f"{ROOT}/csrc", "-I", f"{ROOT}/kernels/cuda"] + [f"-I{p}" for p in include_paths()]
    res = subprocess.run(cmd + [f"{ROOT}/csrc/cuda_ops.cpp"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert torch is not None
