"""Automatic backend choice: measure the candidates once, remember the winner on disk.

When no backend is forced (``backend=`` / :func:`~sparsedm.ops.use_backend` /
``SPARSEDM_BACKEND``) and an op's tensors are on a CUDA device, the registry asks
:func:`choose` which backend to run. For each key

    (op, shape bucket, dtype)   within one environment (GPU name, torch, triton, sparsedm)

the first call times every backend that can run the arguments (``dense``, cuBLAS on the
decompressed weight, included; ``reference`` only when nothing else can run) and keeps the
fastest, so ``auto`` is never slower than the best candidate it measured. Winners live in
memory and in a JSON file under the user cache directory::

    $SPARSEDM_CACHE_DIR/autotune.json, else $XDG_CACHE_HOME/sparsedm/..., else ~/.cache/sparsedm/...

written atomically (temporary file + rename, merged with what other processes wrote).
Entries recorded under other torch / triton / sparsedm versions for the same GPU are stale:
they are ignored, and dropped at the next write. A corrupted file is ignored with a warning
and rewritten. ``SPARSEDM_AUTOTUNE=0`` turns measuring off (the registry's priority order is
used instead). On the CPU nothing is measured: the reference path runs.

Shape buckets: the GEMM row count M (tokens, or batch for convs) is rounded up to a power of
two; every other dimension is exact. The timer is injectable (:class:`Autotuner`), so the
choice logic is tested on CPU with fake timers and fake candidates.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import statistics
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from sparsedm._io import atomic_open

log = logging.getLogger("sparsedm.autotune")

__all__ = [
    "Autotuner",
    "cache_dir",
    "cache_path",
    "cache_summary",
    "choose",
    "clear_cache",
    "cuda_event_timer",
    "current_environment",
    "entry_key",
    "get_autotuner",
    "set_autotuner",
]

SCHEMA = 1
TUNED_OPS = ("sparse24_linear", "sparse24_conv2d", "int8_linear", "sparse24_int8_linear")
CACHE_FILE = "autotune.json"
ENV_CACHE_DIR = "SPARSEDM_CACHE_DIR"
ENV_AUTOTUNE = "SPARSEDM_AUTOTUNE"

# A timer runs a zero-argument callable and returns its time in milliseconds.
Timer = Callable[[Callable[[], Any]], float]
# Candidates, in priority order: (backend name, kernel taking the op's arguments).
Candidates = Sequence[tuple[str, Callable[..., Any]]]


def cache_dir() -> Path:
    """``$SPARSEDM_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparsedm``, else ``~/.cache/sparsedm``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sparsedm"
    return Path.home() / ".cache" / "sparsedm"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def current_environment(device: Optional[torch.device] = None) -> dict[str, str]:
    """What a measurement depends on besides the shape: GPU name and library versions."""
    from sparsedm._version import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton is optional (not on Windows/macOS)
        triton_version = "none"
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version, "sparsedm": __version__}


def _environment_key(env: dict[str, str]) -> str:
    return "|".join(f"{k}={env[k]}" for k in ("gpu", "torch", "triton", "sparsedm"))


def _bucket(m: int) -> int:
    """Round up to a power of two (1, 2, 4, ...): one measurement covers a range of M."""
    return 1 << max(0, math.ceil(math.log2(max(m, 1))))


def entry_key(op: str, args: tuple) -> str:
    """Cache key of one call: op, shape bucket, dtype (and layout facts that change the kernel)."""
    x = args[0]
    dtype = str(x.dtype).replace("torch.", "")
    if op == "sparse24_conv2d":
        _, _, _, _, weight_shape, stride, padding, dilation = args[:8]
        cout, cin, kh, kw = (int(v) for v in weight_shape)
        layout = "nhwc" if (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()) else "nchw"
        return (
            f"{op}|B{_bucket(int(x.shape[0]))}|C{cin}|H{int(x.shape[2])}|W{int(x.shape[3])}|K{cout}|R{kh}|S{kw}"
            f"|stride{'x'.join(map(str, stride))}|pad{'x'.join(map(str, padding))}|dil{'x'.join(map(str, dilation))}"
            f"|{layout}|{dtype}|{args[8] if len(args) > 8 else 'none'}|{'bias' if args[3] is not None else 'nobias'}"
        )
    k = int(x.shape[-1])
    m = x.numel() // max(k, 1)
    n = int(args[1].shape[0])
    key = f"{op}|M{_bucket(m)}|N{n}|K{k}|{dtype}"
    if op == "sparse24_linear":  # the epilogue's cost differs between kernels
        key += f"|{args[4]}|{'bias' if args[3] is not None else 'nobias'}"
    elif op in ("int8_linear", "sparse24_int8_linear"):
        i = 3 if op == "int8_linear" else 4  # bias, then x_scale, then the (optional) activation
        activation = args[i + 2] if len(args) > i + 2 else "none"
        key += f"|{activation}|{'bias' if args[i] is not None else 'nobias'}"
        key += "|static_x" if args[i + 1] is not None else "|dynamic_x"
    return key


def cuda_event_timer(fn: Callable[[], Any], *, warmup: int = 3, reps: int = 10) -> float:
    """Median GPU time of ``fn`` in ms with CUDA events, after ``warmup`` untimed runs.

    Each timed call is queued behind a short GPU busy-wait (sparsedm.bench.timing.LEAD_CYCLES),
    so the span is the kernels' time, not the host's dispatch of them: the choice is made for
    the GPU work, which is all a CUDA-graph replay of the model pays.
    """
    from sparsedm.bench.timing import CudaEventTimer

    for _ in range(warmup):
        fn()
    timer = CudaEventTimer()
    times = []
    for _ in range(reps):
        timer.start()
        fn()
        times.append(timer.stop())
    return statistics.median(times)


class Autotuner:
    """Measures candidates per key, remembers winners in memory and in a JSON file.

    ``timer``: how to time a candidate (default :func:`cuda_event_timer`); ``path``: the cache
    file (default :func:`cache_path`, read at first use); ``environment``: the dict that keys
    the measurements, or a function ``device -> dict`` (default :func:`current_environment` of
    the call's device, so each GPU of a mixed host has its own section); ``can_measure``:
    whether measuring is allowed right now (default: not while a CUDA graph is being captured).
    """

    def __init__(
        self,
        *,
        timer: Optional[Timer] = None,
        path: Optional[os.PathLike] = None,
        environment: Union[None, dict[str, str], Callable[[torch.device], dict[str, str]]] = None,
        can_measure: Optional[Callable[[], bool]] = None,
    ):
        self.timer = timer or cuda_event_timer
        self._path = Path(path) if path is not None else None
        self._environment = environment
        self._device_envs: dict[str, dict[str, str]] = {}  # str(device) -> environment
        self._can_measure = can_measure or _not_capturing
        self._winners: dict[str, dict[str, dict]] = {}  # env key -> entry key -> {"backend", "ms", "date"}
        self._lock = threading.RLock()

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else cache_path()

    @property
    def environment(self) -> dict[str, str]:
        """The environment of the current device (calls use their own tensor's device)."""
        return self.environment_for(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))

    def environment_for(self, device: torch.device) -> dict[str, str]:
        if isinstance(self._environment, dict):
            return self._environment
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        env = self._device_envs.get(str(device))
        if env is None:
            source = self._environment or (lambda d: current_environment(d if d.type == "cuda" else None))
            env = self._device_envs[str(device)] = source(device)
        return env

    def _env_of(self, args: tuple) -> dict[str, str]:
        x = args[0]
        return self.environment_for(x.device if isinstance(x, torch.Tensor) else torch.device("cpu"))

    # -- the choice ---------------------------------------------------------------------------

    def lookup(self, op: str, args: tuple) -> Optional[str]:
        """The remembered winner for this call, or None."""
        entry = self._entries(self._env_of(args)).get(entry_key(op, args))
        return None if entry is None else entry["backend"]

    def choose(self, op: str, args: tuple, candidates: Callable[[], Candidates]) -> Optional[str]:
        """The backend to run ``op(*args)``: remembered, else measured now (see module docstring).

        ``candidates`` is called only on a miss; it returns ``(name, kernel)`` pairs in priority
        order. Returns None when there is no candidate.
        """
        if op not in TUNED_OPS:  # compress/decompress run at load time: priority order is enough
            pairs = list(candidates())
            return pairs[0][0] if pairs else None
        key = entry_key(op, args)
        env = self._env_of(args)
        with self._lock:
            entry = self._entries(env).get(key)
            if entry is not None:
                return entry["backend"]
            pairs = list(candidates())
            if not pairs:
                return None
            if len(pairs) == 1 or os.environ.get(ENV_AUTOTUNE, "1").strip() == "0" or not self._can_measure():
                return pairs[0][0]  # nothing to compare, or not allowed: priority order, not cached
            times = {}
            for name, kernel in pairs:
                try:
                    times[name] = float(self.timer(lambda kernel=kernel: kernel(*args)))
                except Exception as exc:  # a candidate that fails to run is not a candidate
                    log.warning("autotune: %s on %s failed while being measured (%s: %s); skipping it", op, name, type(exc).__name__, exc)
            if not times:
                return pairs[0][0]
            winner = min(times, key=times.__getitem__)  # ties go to the earlier (higher priority) one
            if winner != "dense" and "dense" in times:
                # Measuring dense decompressed this weight into a cache; a losing dense must not
                # keep a full dense copy of every sparse layer in memory.
                from sparsedm.ops import dense

                dense.forget(args)
            for loser in ("cusparselt", "cutlass"):
                if winner != loser and loser in times:  # likewise torch's converted 2:4 weights
                    from sparsedm.ops import torch_sparse

                    torch_sparse.forget(args, loser)
            record = {
                "backend": winner,
                "ms": {name: round(ms, 6) for name, ms in times.items()},
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            self._entries(env)[key] = record
            log.info(
                "autotune: %s -> %s (%s)", key, winner,
                ", ".join(f"{name} {ms:.4g} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1])),
            )
            self._save(key, record, env)
            return winner

    def forget(self, op: str, args: tuple) -> None:
        """Drop the remembered winner of this call from memory (the file keeps it)."""
        with self._lock:
            self._entries(self._env_of(args)).pop(entry_key(op, args), None)

    # -- the file -----------------------------------------------------------------------------

    def _entries(self, env: dict[str, str]) -> dict[str, dict]:
        """The winners under ``env`` (read from the file at first use)."""
        env_key = _environment_key(env)
        winners = self._winners.get(env_key)
        if winners is None:
            section = self._read().get("environments", {}).get(env_key, {})
            winners = self._winners[env_key] = dict(section.get("entries", {}))
        return winners

    def _read(self) -> dict:
        """The cache file's content; {} when missing, or (with a warning) when unreadable."""
        path = self.path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            _warn(f"cannot read the autotune cache {path} ({exc}); measuring again")
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("environments"), dict):
                raise ValueError(f"not a schema-{SCHEMA} sparsedm autotune cache")
            for section in data["environments"].values():
                if not isinstance(section, dict) or not isinstance(section.get("entries"), dict):
                    raise ValueError("an environment section has no 'entries' table")
                for entry in section["entries"].values():
                    if not isinstance(entry, dict) or not isinstance(entry.get("backend"), str):
                        raise ValueError("an entry has no 'backend'")
        except ValueError as exc:
            _warn(f"ignoring the corrupted autotune cache {path} ({exc}); it will be rewritten")
            return {}
        return data

    def _save(self, key: str, record: dict, env: dict[str, str]) -> None:
        """Merge ``record`` into the file (re-read first: other processes may have written)."""
        path = self.path
        env_key = _environment_key(env)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a corrupted file was reported when first read
                data = self._read()
            sections = data.get("environments", {})
            # Same GPU, other versions: stale measurements (a new kernel may change the winner).
            sections = {k: v for k, v in sections.items() if not (v.get("gpu") == env["gpu"] and k != env_key)}
            section = sections.setdefault(env_key, {**env, "entries": {}})
            section["entries"].update(self._entries(env))
            section["entries"][key] = record
            data = {"schema": SCHEMA, "environments": sections}
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(str(path), "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
        except OSError as exc:  # a read-only home must not stop inference
            log.warning("autotune: could not write the cache %s (%s); the choice is kept in memory only", path, exc)


def _warn(message: str) -> None:
    log.warning("autotune: %s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _not_capturing() -> bool:
    # Timing synchronizes the stream, which is illegal inside CUDA graph capture.
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


_DEFAULT: Optional[Autotuner] = None
_DEFAULT_LOCK = threading.Lock()


def get_autotuner() -> Autotuner:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Autotuner()
        return _DEFAULT


def set_autotuner(tuner: Optional[Autotuner]) -> Optional[Autotuner]:
    """Install ``tuner`` as the process-wide one (None: a fresh default at next use); returns the old one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, tuner
        return old


def choose(op: str, args: tuple, candidates: Callable[[], Candidates]) -> Optional[str]:
    """:meth:`Autotuner.choose` of the process-wide autotuner (what the registry calls)."""
    return get_autotuner().choose(op, args, candidates)


def cache_summary(path: Optional[os.PathLike] = None) -> list[dict]:
    """Rows of the cache file for display (``sparsedm info --backends``).

    Each row: ``gpu, torch, triton, sparsedm, current`` (measured under this process's
    versions), ``op, key, backend, ms`` (every candidate's time) and ``speedup_vs_dense``
    (dense time / winner time, when dense was measured).
    """
    tuner = Autotuner(path=path) if path is not None else get_autotuner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = tuner._read()
    try:
        current = _environment_key(current_environment())
    except Exception:
        current = None
    rows = []
    for env_key, section in sorted(data.get("environments", {}).items()):
        for key, entry in sorted(section.get("entries", {}).items()):
            ms = entry.get("ms", {})
            best = ms.get(entry["backend"])
            rows.append({
                "gpu": section.get("gpu"),
                "torch": section.get("torch"),
                "triton": section.get("triton"),
                "sparsedm": section.get("sparsedm"),
                "current": env_key == current,
                "op": key.split("|", 1)[0],
                "key": key,
                "backend": entry["backend"],
                "ms": ms,
                "speedup_vs_dense": (ms["dense"] / best) if best and "dense" in ms else None,
            })
    return rows


def clear_cache(path: Optional[os.PathLike] = None) -> None:
    """Delete the cache file and forget the process-wide autotuner's winners."""
    target = Path(path) if path is not None else cache_path()
    with contextlib.suppress(OSError):
        target.unlink()
    set_autotuner(None)
