"""Build ``export/runner`` (C++17 + CMake) against the ExecuTorch wheel's libraries.

- host (x86-64 here): the ``executorch`` package installed in this Python environment.
- ``aarch64``: Debian's ``g++-aarch64-linux-gnu`` with
  ``export/runner/cmake/aarch64-linux-gnu.cmake``
  against the ``manylinux_2_28_aarch64`` wheel of the same version, fetched once into a cache
  (:func:`fetch_executorch_wheel`). Runs on x86-64 under ``qemu-aarch64 -L /usr/aarch64-linux-gnu``
  (correctness only: emulated timings are not ARM latency).

Builds are incremental (CMake); a build dir is tied to one architecture.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asrq.utils.io import AsrqError

Arch = Literal["host", "aarch64"]
ARCHS: tuple[str, ...] = ("host", "aarch64")
#: the executorch version whose wheels the runner links (pyproject pins it)
EXECUTORCH_VERSION = "1.5.1"
AARCH64_PLATFORM = "manylinux_2_28_aarch64"
#: the shared libraries the runner links (and a target needs beside it)
RUNNER_LIBS: tuple[str, ...] = (
    "libexecutorch.so",
    "libexecutorch_kernels_optimized.so",
    "libexecutorch_backend_xnnpack.so",
    "libexecutorch_threadpool.so",
)
#: what a target needs of a model directory
MODEL_FILES: tuple[str, ...] = (
    "encoder_streaming.pte",
    "predictor.pte",
    "joiner.pte",
    "metadata.json",
    "tokens.txt",
)
QEMU_AARCH64: tuple[str, ...] = ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def runner_source() -> Path:
    src = repo_root() / "export" / "runner"
    if not (src / "CMakeLists.txt").is_file():
        raise AsrqError(f"{src}: runner sources not found (asrq installed without its repository?)")
    return src


def default_cache_dir() -> Path:
    return repo_root() / "build" / "cache"


def host_executorch_root() -> Path:
    """``site-packages/executorch`` of this interpreter's install (lib/, include/, share/cmake/)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise AsrqError("the executorch package is not installed; pip install executorch")
    root = Path(list(spec.submodule_search_locations)[0])
    _check_root(root)
    return root


def _check_root(root: Path) -> None:
    if not (root / "share" / "cmake" / "executorch-config.cmake").is_file():
        raise AsrqError(
            f"{root}: not an executorch package (no share/cmake/executorch-config.cmake)"
        )
    missing = [lib for lib in RUNNER_LIBS if not (root / "lib" / lib).is_file()]
    if missing:
        raise AsrqError(f"{root}/lib: missing {missing}")


def fetch_executorch_wheel(
    cache_dir: str | Path | None = None,
    platform_tag: str = AARCH64_PLATFORM,
    version: str = EXECUTORCH_VERSION,
    python_version: str = "3.11",
) -> Path:
    """Download the ``executorch`` wheel for ``platform_tag`` with pip and unpack its runtime
    parts (lib/, include/, share/); returns the unpacked ``executorch`` package root. Skips both
    steps when they are done (a marker file records a complete unpack)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    dest = cache / f"executorch-{version}-{platform_tag}"
    root = dest / "executorch"
    marker = dest / ".unpacked"
    if marker.is_file():
        return root
    dl = cache / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob(f"executorch-{version}-*{platform_tag}*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"executorch=={version}",
            "--no-deps",
            "--platform",
            platform_tag,
            "--python-version",
            python_version,
            "--only-binary=:all:",
            "-d",
            str(dl),
            "-q",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dl.glob(f"executorch-{version}-*{platform_tag}*.whl"))
        if res.returncode != 0 or not wheels:
            raise AsrqError(
                f"pip could not download executorch=={version} for {platform_tag}: "
                f"{res.stderr.strip()[-500:]}"
            )
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as z:
        names = [
            n
            for n in z.namelist()
            if n.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))
        ]
        z.extractall(tmp, names)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    _check_root(root)
    marker.write_text(wheels[-1].name + "\n")
    return root


@dataclass
class RunnerBuild:
    """A built runner: the binary, the shared libraries it needs beside it, and how to start it
    on this machine (``launcher``: ``qemu-aarch64 ...`` for an aarch64 build on x86-64)."""

    binary: Path
    arch: str
    executorch_root: Path
    launcher: list[str] = field(default_factory=list)

    @property
    def libs(self) -> list[Path]:
        return [self.executorch_root / "lib" / n for n in RUNNER_LIBS]

    def command(self, *args: str) -> list[str]:
        """argv to run the binary on this machine."""
        return [*self.launcher, str(self.binary), *args]


def _need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AsrqError(
            f"{name} not found; install the Debian package {package} (make system-deps)"
        )
    return path


def build_runner(
    arch: Arch = "host",
    build_dir: str | Path | None = None,
    executorch_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    jobs: int = 2,
) -> RunnerBuild:
    """Configure (once) and build ``export/runner`` for ``arch``; returns the :class:`RunnerBuild`.

    ``executorch_root`` defaults to this environment's package (host) or the fetched
    aarch64 wheel (:func:`fetch_executorch_wheel` into ``cache_dir``).
    """
    if arch not in ARCHS:
        raise AsrqError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    src = runner_source()
    build = Path(build_dir) if build_dir else repo_root() / "build" / f"runner-{arch}"
    cmake = _need_tool("cmake", "cmake")
    configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    launcher: list[str] = []
    if arch == "host":
        _need_tool("g++", "g++")
        root = Path(executorch_root) if executorch_root else host_executorch_root()
    else:
        _need_tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
        root = Path(executorch_root) if executorch_root else fetch_executorch_wheel(cache_dir)
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={src / 'cmake' / 'aarch64-linux-gnu.cmake'}")
        if platform.machine() not in ("aarch64", "arm64"):
            launcher = list(QEMU_AARCH64)
    _check_root(root)
    configure.append(f"-DEXECUTORCH_ROOT={root}")
    cache = build / "CMakeCache.txt"
    configured = cache.is_file() and any(
        line.startswith("EXECUTORCH_ROOT:") and line.endswith(f"={root}")
        for line in cache.read_text().splitlines()
    )
    if not configured:
        _run(configure, "cmake configure")
    _run([cmake, "--build", str(build), "-j", str(jobs)], "cmake build")
    binary = build / "asrq-runner"
    if not binary.is_file():
        raise AsrqError(f"{binary}: the build finished without the binary")
    return RunnerBuild(binary, arch, root, launcher)


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-25:])
        raise AsrqError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{tail}")
