"""The compiled extension, the standalone CMake build and the `sparsedm` command."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sparsedm import _ext
from sparsedm.cli import main
from sparsedm.formats.sparse24 import _kept_positions


def test_extension_decodes_meta_like_the_format():
    if _ext.C is None:
        pytest.skip(f"sparsedm._C not built: {_ext.import_error}")
    info = _ext.C.build_info()
    assert isinstance(info["cuda"], bool)
    if not info["cuda"]:
        assert info["why_cpu_only"], "a CPU-only build must say why"
    everything = torch.arange(256, dtype=torch.int64).to(torch.uint8)[:, None]
    kept = _kept_positions(everything).reshape(256, 4).tolist()
    assert [_ext.C.decode_meta_byte(b) for b in range(256)] == kept


def test_cmake_builds_and_cpp_tests_pass(tmp_path):
    """The C++ host tests (lane emulator, fragment maps, conv gather, grid math) through CMake;
    where cmake is missing, each tests/cpp/test_*.cpp is compiled with the host compiler the way
    CMakeLists.txt does it, so the emulator checks never silently drop out."""
    root = __file__.rsplit("/tests/", 1)[0]
    if shutil.which("cmake") is None:
        cxx = shutil.which("g++") or shutil.which("c++")
        if cxx is None:
            pytest.skip("neither cmake nor a host C++ compiler")
        sources = sorted(glob.glob(f"{root}/tests/cpp/test_*.cpp"))
        assert sources
        for src in sources:
            exe = str(tmp_path / os.path.basename(src)[:-4])
            build = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", f"{root}/kernels/cuda",
                                    src, "-o", exe], capture_output=True, text=True)
            assert build.returncode == 0, build.stderr[-4000:]
            res = subprocess.run([exe], capture_output=True, text=True)
            assert res.returncode == 0, f"{os.path.basename(src)}:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"
        return
    subprocess.run(["cmake", "-S", root, "-B", str(tmp_path)], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(tmp_path), "-j", "2"], check=True, capture_output=True)
    out = subprocess.run(["ctest", "--test-dir", str(tmp_path), "--output-on-failure"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "100% tests passed" in out.stdout


def test_cmake_cuda_build(tmp_path):
    """CMakeLists.txt's SPARSEDM_WITH_CUDA=ON path (the standalone build of csrc/cuda with the
    kernel headers), for one arch: configures and compiles, the library holds every launch file."""
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if shutil.which("cmake") is None or not os.path.exists(nvcc):
        pytest.skip("needs cmake and nvcc")
    root = __file__.rsplit("/tests/", 1)[0]
    env = {**os.environ, "CUDACXX": nvcc}
    for cmd in (["cmake", "-S", root, "-B", str(tmp_path), "-DSPARSEDM_WITH_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80"],
                ["cmake", "--build", str(tmp_path), "-j", "2", "--target", "sparsedm_cuda"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (lib,) = glob.glob(str(tmp_path / "**" / "libsparsedm_cuda.a"), recursive=True)
    members = subprocess.run(["ar", "t", lib], capture_output=True, text=True, check=True).stdout
    launch = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{root}/csrc/cuda/*.cu"))
    assert all(f"{name}.cu.o" in members for name in launch), members


def test_info_lists_reference_backend(capsys):
    assert main(["info", "--backends"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith("reference")]
    assert lines and lines[0][1] == "yes"
    assert "sparse24_linear" in out


def test_info_json_reports_unavailable_backends_with_reasons(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["reference"]["available"] is True
    for b in backends.values():
        assert b["detail"], f"backend {b['name']} has no explanation"
    assert report["torch"] == torch.__version__


def test_info_backends_shows_the_autotune_cache(tmp_path, capsys, monkeypatch):
    """`info --backends` (text and --json) lists the remembered automatic choices."""
    from sparsedm.ops import autotune

    monkeypatch.setenv("SPARSEDM_CACHE_DIR", str(tmp_path))
    env = {**autotune.current_environment(), "gpu": "FakeGPU"}
    tuner = autotune.Autotuner(timer=lambda fn: 1.0, environment=env)
    tuner._save("sparse24_linear|m128|n512|k512|float16", {"backend": "cuda", "ms": {"cuda": 0.05, "dense": 0.09}}, env)
    assert main(["info", "--backends"]) == 0
    out = capsys.readouterr().out
    assert "FakeGPU" in out and "-> cuda" in out and "dense 0.090 ms" in out
    assert main(["info", "--backends", "--json"]) == 0
    cache = json.loads(capsys.readouterr().out)["autotune_cache"]
    assert cache["path"].startswith(str(tmp_path)) and cache["entries"][0]["backend"] == "cuda"


def test_info_on_a_checkpoint_or_a_folder_says_what_it_is(tmp_path, capsys):
    pth = tmp_path / "model.pth"
    torch.save({"w": torch.randn(3)}, pth)
    assert main(["info", str(pth)]) != 0
    assert "is a PyTorch checkpoint, not a file written by `sparsedm convert`" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) != 0
    assert "is a directory, not a converted file" in capsys.readouterr().err
    assert main(["info", "--backends", str(pth)]) == 2
    assert "--backends describes this machine" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "sparsedm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
    out = subprocess.run([sys.executable, "-m", "sparsedm"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stdout
