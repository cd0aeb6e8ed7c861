"""Backend registry: which implementation runs each ``sparsedm::`` op.

A backend is a name, a probe that says whether it can run on this machine (and why not),
and a table of kernels, one per op. A kernel may also say which arguments it cannot handle
(``supports``), e.g. a CUDA kernel given CPU tensors.

Choice, for each call:

1. a backend forced for the call (``backend=`` of the Python wrappers, :func:`use_backend`),
   else the ``SPARSEDM_BACKEND`` environment variable (``auto`` means "not forced");
2. a forced backend must run the call: unknown name, unavailable backend, missing kernel or
   unsupported arguments raise :class:`BackendUnavailableError`; there is no silent fallback;
3. otherwise, for CUDA tensors, the backend that :mod:`sparsedm.ops.autotune` measured
   fastest for this (op, shape bucket, dtype, GPU) among those that can run the call
   (``dense`` included), remembered on disk;
4. failing that, the first backend in :data:`PRIORITY` that is available, has the kernel and
   supports the arguments; ``reference`` runs everything, so the search always ends. CPU
   tensors get the reference path unless a backend is forced.

Adding a backend is ``register_backend(...)`` plus ``register_kernel(...)`` per op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger("sparsedm.ops")

__all__ = [
    "BackendUnavailableError",
    "Backend",
    "Kernel",
    "PRIORITY",
    "register_backend",
    "register_kernel",
    "get_backend",
    "backends",
    "backend_status",
    "forced_backend",
    "use_backend",
    "select",
    "why_not",
    "run",
    "dispatch_counts",
]

# Preferred order when nothing is measured (SPARSEDM_AUTOTUNE=0, a first call during CUDA-graph
# capture): sparsedm's kernels, then dense; torch's 2:4 GEMMs only where those cannot run (they
# convert the weight on first use, and at small M cuSPARSELt is far slower than dense).
PRIORITY = ("cuda", "triton", "dense", "cusparselt", "cutlass", "reference")

ENV_VAR = "SPARSEDM_BACKEND"
# Backends chosen automatically for CPU tensors.
CPU_AUTO_BACKENDS = ("reference",)


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run the requested op on the given arguments."""


@dataclass
class Kernel:
    fn: Callable[..., Any]
    # Returns None when the kernel can run these op arguments, else the reason it cannot.
    supports: Optional[Callable[..., Optional[str]]] = None


@dataclass
class Backend:
    name: str
    summary: str
    # Returns None when usable on this machine, else the reason (naming what is missing).
    probe: Callable[[], Optional[str]]
    kernels: dict[str, Kernel] = field(default_factory=dict)
    # Imports the module that registers this backend's kernels; run once, on first use, so
    # that `import sparsedm` does not pay for importing triton or the extension.
    loader: Optional[Callable[[], None]] = None
    load_error: Optional[str] = None
    # The ops its kernels implement, declared at registration: what `sparsedm info --backends`
    # lists for a backend whose kernels are not loaded (unavailable here).
    provides: tuple = ()
    _probed: Optional[tuple] = field(default=None, repr=False)

    def _load(self) -> None:
        loader, self.loader = self.loader, None
        if loader is not None:
            try:
                loader()
            except Exception as exc:
                self.load_error = f"loading its kernels failed: {type(exc).__name__}: {exc}"

    def reprobe(self) -> None:
        """Forget the probe's answer (something it asks about changed: a JIT build loaded ops)."""
        self._probed = None

    def unavailable_reason(self) -> Optional[str]:
        # Probes ask about the machine and the install, which do not change while the process
        # runs: probe once, since this is on every op call's path.
        if self._probed is None:
            try:
                self._probed = (self.probe(),)
            except Exception as exc:  # a probe must never take the process down
                self._probed = (f"probe failed: {type(exc).__name__}: {exc}",)
        reason = self._probed[0]
        if reason is None:
            self._load()
            reason = self.load_error
        if reason is None and not self.kernels:
            reason = "no kernels are registered for this backend in this version of sparsedm"
        return reason


_BACKENDS: dict[str, Backend] = {}
_LOCAL = threading.local()
# (op, backend) -> number of calls dispatched; lets tests prove which kernel really ran.
dispatch_counts: Counter = Counter()


def register_backend(
    name: str, summary: str, probe: Callable[[], Optional[str]], loader: Optional[Callable[[], None]] = None,
    provides: tuple = (),
) -> Backend:
    """Register (or replace the probe and loader of) a backend; returns it. ``provides``: the
    ops its kernels implement (listed even where the backend cannot run)."""
    if name in _BACKENDS:
        backend = _BACKENDS[name]
        backend.summary, backend.probe, backend.loader, backend._probed = summary, probe, loader, None
        backend.provides = tuple(provides)
    else:
        backend = _BACKENDS[name] = Backend(name, summary, probe, loader=loader, provides=tuple(provides))
    return backend


def register_kernel(op: str, backend: str, fn: Callable[..., Any], supports: Optional[Callable[..., Optional[str]]] = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``sparsedm::op``.

    ``fn`` takes the op's arguments in schema order and returns its outputs.
    """
    if backend not in _BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; call register_backend first")
    _BACKENDS[backend].kernels[op] = Kernel(fn, supports)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known backends: {', '.join(sorted(_BACKENDS))} "
            f"(or 'auto' to let sparsedm choose)"
        ) from None


def backends() -> list[Backend]:
    """All registered backends, in priority order."""
    rank = {name: i for i, name in enumerate(PRIORITY)}
    return sorted(_BACKENDS.values(), key=lambda b: (rank.get(b.name, len(PRIORITY)), b.name))


def backend_status() -> list[tuple[str, bool, str, list[str]]]:
    """``(name, available, reason or summary, ops)`` for every backend."""
    rows = []
    for b in backends():
        reason = b.unavailable_reason()
        rows.append((b.name, reason is None, reason or b.summary, sorted(b.kernels) or sorted(b.provides)))
    return rows


def forced_backend() -> Optional[str]:
    """The backend forced for this thread (``use_backend``) or by ``SPARSEDM_BACKEND``."""
    name = getattr(_LOCAL, "backend", None)
    if name is None:
        name = os.environ.get(ENV_VAR) or None
    if name is not None:
        name = name.strip().lower()
        if name in ("", "auto"):
            return None
    return name


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force ``name`` for the ops called inside the block (``None``/``"auto"``: no change)."""
    if name is None or name.strip().lower() == "auto":
        yield
        return
    get_backend(name.strip().lower())  # unknown names fail here, before any op runs
    previous = getattr(_LOCAL, "backend", None)
    _LOCAL.backend = name.strip().lower()
    try:
        yield
    finally:
        _LOCAL.backend = previous


def why_not(backend: Backend, op: str, args: tuple) -> Optional[str]:
    """None when ``backend`` can run ``op`` on ``args``, else the reason it cannot."""
    reason = backend.unavailable_reason()
    if reason is not None:
        return reason
    kernel = backend.kernels.get(op)
    if kernel is None:
        return f"it has no kernel for {op} (it has: {', '.join(sorted(backend.kernels))})"
    if kernel.supports is not None:
        return kernel.supports(*args)
    return None


def select(op: str, args: tuple) -> tuple[str, Kernel]:
    """Choose the backend and kernel for one call of ``op`` (see the module docstring)."""
    forced = forced_backend()
    if forced is not None:
        backend = get_backend(forced)
        reason = why_not(backend, op, args)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {forced!r} was forced (backend= or {ENV_VAR}) but cannot run {op}: {reason}. "
                f"Unset {ENV_VAR} or pass backend='auto' to let sparsedm choose; "
                f"`sparsedm info` lists what each backend needs"
            )
        return forced, backend.kernels[op]
    device_type = _first_device_type(args)
    if device_type == "cuda":
        name = _autotuned(op, args)
        if name is not None:
            return name, _BACKENDS[name].kernels[op]
    on_cpu = device_type == "cpu"
    for backend in backends():
        # On CPU only the reference path is chosen automatically: other backends reach CPU
        # tensors through test-only emulation (Triton's interpreter) and must be forced.
        if on_cpu and backend.name not in CPU_AUTO_BACKENDS:
            continue
        if why_not(backend, op, args) is None:
            return backend.name, backend.kernels[op]
    raise BackendUnavailableError(f"no registered backend can run {op} on these arguments")


def _autotuned(op: str, args: tuple) -> Optional[str]:
    """The backend :mod:`sparsedm.ops.autotune` measured fastest for this call (CUDA only)."""
    from sparsedm.ops import autotune  # imported on the first GPU call: CPU-only use never needs it

    def candidates():
        usable = [b for b in backends() if why_not(b, op, args) is None]
        fast = [b for b in usable if b.name != "reference"]  # dense always beats reference
        return [(b.name, b.kernels[op].fn) for b in (fast or usable)]

    name = autotune.choose(op, args, candidates)
    if name is None or name not in _BACKENDS or why_not(_BACKENDS[name], op, args) is not None:
        return None  # a remembered winner this install cannot run: fall back to priority order
    return name


def _first_device_type(args: tuple) -> Optional[str]:
    for a in args:
        if hasattr(a, "device") and hasattr(a, "dtype"):
            return a.device.type
    return None


def run(op: str, *args: Any) -> Any:
    """Dispatch one call of ``sparsedm::op``."""
    name, kernel = select(op, args)
    dispatch_counts[(op, name)] += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s -> %s", op, name)
    return kernel.fn(*args)
