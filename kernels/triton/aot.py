"""Ahead-of-time compilation of the Triton kernels for GPUs this machine does not have.

``compile_for`` builds one kernel configuration for a compute capability with
``triton.compile`` and a ``GPUTarget``, and reports what a kernel engineer checks without a
GPU: the tensor-core instructions in the PTX, registers, spills and shared memory (read from
the cubin with the ``cuobjdump`` that ships inside the triton wheel, spills with its ``ptxas -v``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

__all__ = ["CompiledConfig", "compile_for", "tensor_core_instructions"]

_MMA = re.compile(r"\b(mma\.sync\.aligned\.[\w.]+|mma\.sp[\w:.]*|wgmma\.mma_async[\w.]*)")
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_TARGET = re.compile(r"^\s*\.target\s+(sm_\w+)", re.MULTILINE)


@dataclass
class CompiledConfig:
    cc: int
    ptx: str
    registers: int | None
    stack_bytes: int | None
    local_bytes: int | None  # local memory reported by cuobjdump
    shared_bytes: int
    sass: str | None
    # Bytes of spill stores + loads per thread (ptxas -v). A spill can land in the ABI stack
    # frame, where cuobjdump's LOCAL stays 0: so a kernel with a stack frame is run through
    # ptxas -v. None when cuobjdump or ptxas is missing.
    spill_bytes: int | None = None

    @property
    def mma(self) -> list[str]:
        return tensor_core_instructions(self.ptx)


def tensor_core_instructions(ptx: str) -> list[str]:
    """Distinct ``mma`` / ``mma.sp`` / ``wgmma`` instruction spellings in a PTX listing."""
    return sorted(set(_MMA.findall(ptx)))


def _cuda_tool(name: str) -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def _cubin_report(cubin: bytes, want_sass: bool):
    tool = _cuda_tool("cuobjdump")
    if tool is None:
        return None, None, None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout if want_sass else None
    m = _RES.search(res)
    if m is None:
        return None, None, None, sass
    regs, stack, _shared, local = (int(v) for v in m.groups())
    return regs, stack, local, sass


def _ptxas(cc: int) -> str | None:
    """The ptxas the installed Triton compiles sm_{cc} with (it ships two; which serves an arch
    differs between versions)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return _cuda_tool("ptxas")
    try:
        try:
            tool = get_ptxas(cc)
        except TypeError:  # versions whose get_ptxas takes no arch
            tool = get_ptxas()
        return tool.path
    except (AttributeError, RuntimeError):
        return _cuda_tool("ptxas")


def ptxas_spill_bytes(ptx: str, cc: int) -> int | None:
    """Spill stores + loads that ``ptxas -v`` reports for a PTX listing compiled for sm_{cc}
    (its own ``.target``); None without a ptxas."""
    tool = _ptxas(cc)
    target = _TARGET.search(ptx)
    if tool is None or target is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([tool, f"-arch={target.group(1)}", "-v", src, "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True)
    found = _SPILLS.findall(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"ptxas -v gave no spill report (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}")
    return sum(int(stores) + int(loads) for stores, loads in found)


def compile_for(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    cc: int,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    divisible_by_16: Iterable[str] = (),
    want_sass: bool = False,
) -> CompiledConfig:
    """Compile ``kernel`` for ``sm_{cc}``.

    ``signature`` maps every argument to a Triton type (``"*fp16"``, ``"i32"``,
    ``"constexpr"``...); ``constexprs`` gives the constexpr values. ``divisible_by_16`` names
    the pointer and integer arguments a real launch would see as multiples of 16 (the JIT
    specializes on that): without these hints Triton neither vectorizes nor pipelines the
    loads, and registers and shared memory would not be those of a real run.

    Compile in a process without ``TRITON_INTERPRET=1`` when the kernel calls other
    ``@triton.jit`` functions: under the interpreter those are not compilable objects.
    """
    fn = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)
    attrs = {
        (fn.arg_names.index(name),): [["tt.divisibility", 16]]
        for name in divisible_by_16
        if signature[name] != "constexpr"
    }
    src = ASTSource(fn=fn, signature=dict(signature), constexprs=dict(constexprs), attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    regs, stack, local, sass = _cubin_report(compiled.asm["cubin"], want_sass)
    if stack is None:
        spills = None
    elif stack == 0:
        spills = local  # no stack frame: nothing spilled there
    else:
        spilled = ptxas_spill_bytes(ptx, cc)
        spills = None if spilled is None else spilled + local
    return CompiledConfig(cc, ptx, regs, stack, local, int(compiled.metadata.shared), sass, spills)
