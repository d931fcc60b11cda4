"""``asrq device``: build the native runner and benchmark it on a device (thin over
:mod:`asrq.device`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from asrq.utils.io import AsrqError


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, e.g. 1,2 (got {value!r})"
        ) from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"thread counts must be >= 1 (got {value!r})")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def device() -> None:
    """Native runner (export/runner, C++ over the ExecuTorch wheel's libraries) on devices.

    \b
      asrq device build --arch host            # -> build/runner-host/asrq-runner
      asrq device build --arch aarch64         # cross-compiled; fetches the aarch64 wheel once
      asrq device bench exp/mini/export --target local --threads 1,2 --wavs a.flac --wavs b.wav
      asrq device bench exp/mini/export --target ssh:pi@board --arch aarch64 --wavs a.wav
      asrq device bench exp/mini/export --target adb:R58M123 --runner android/asrq-runner \\
          --runner-libs android/lib --wavs a.wav

    Results: devices/<name>/bench.json (+ bench.png): per thread count the chunk latency
    p50/p90/p99, RTF, load time and peak RSS measured by the runner on the device.
    """


@device.command()
@click.option(
    "--arch",
    type=click.Choice(["host", "aarch64"]),
    default="host",
    show_default=True,
    help="host: this machine's compiler and executorch install; aarch64: Debian's "
    "g++-aarch64-linux-gnu against the manylinux_2_28_aarch64 wheel.",
)
@click.option(
    "--build-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="CMake build dir. [default: build/runner-<arch>]",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the aarch64 wheel is downloaded and unpacked. [default: build/cache]",
)
def build(arch: str, build_dir: Path | None, cache_dir: Path | None) -> None:
    """Build export/runner with CMake; prints the binary's path."""
    from asrq.device.build import build_runner

    r = build_runner(arch, build_dir, cache_dir=cache_dir)  # type: ignore[arg-type]
    click.echo(str(r.binary))


@device.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--target", default="local", show_default=True, help="local | ssh:USER@HOST[:PORT] | adb:SERIAL"
)
@click.option(
    "--threads",
    default="1",
    callback=_int_list,
    show_default=True,
    help="Comma-separated thread counts; each run pins its threads to the fastest cores.",
)
@click.option(
    "--wavs",
    "wavs",
    multiple=True,
    type=click.Path(path_type=Path),
    required=True,
    help="Test audio (any format asrq reads; sent as 16 kHz PCM wav); repeat for several.",
)
@click.option(
    "--name", default=None, help="Result folder name. [default: local / the host / the serial]"
)
@click.option(
    "--out",
    "out_root",
    type=click.Path(path_type=Path),
    default=Path("devices"),
    show_default=True,
    help="Results go to OUT/<name>/bench.json + bench.png.",
)
@click.option(
    "--arch",
    type=click.Choice(["host", "aarch64"]),
    default=None,
    help="Runner to build. [default: host for local, else asked with uname -m]",
)
@click.option(
    "--runner",
    "runner_bin",
    type=click.Path(path_type=Path),
    default=None,
    help="A prebuilt runner binary (e.g. an Android NDK build) instead of building one.",
)
@click.option(
    "--runner-libs",
    type=click.Path(path_type=Path),
    default=None,
    help="With --runner: the executorch package root or lib/ dir its libraries come from.",
)
@click.option(
    "--workdir",
    default=None,
    help="Work dir on the target. [default: a temp dir / "
    "/tmp/asrq-device (ssh) / /data/local/tmp/asrq (adb)]",
)
@click.option("--identity", default=None, help="ssh: private key file.")
@click.option(
    "--ssh-option", "ssh_options", multiple=True, help="ssh: extra -o KEY=VALUE; repeatable."
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Untimed decodes of the first file before timing.",
)
@click.option("--no-pin", is_flag=True, help="Do not pin threads with taskset.")
@click.option("--keep", is_flag=True, help="Leave the pushed files on the target.")
def bench(
    model_dir: Path,
    target: str,
    threads: list[int],
    wavs: tuple[Path, ...],
    name: str | None,
    out_root: Path,
    arch: str | None,
    runner_bin: Path | None,
    runner_libs: Path | None,
    workdir: str | None,
    identity: str | None,
    ssh_options: tuple[str, ...],
    warmup: int,
    no_pin: bool,
    keep: bool,
) -> None:
    """Push the runner, its libraries, MODEL_DIR's ExecuTorch programs and --wavs to --target,
    run per thread count, pull the JSON; write OUT/<name>/bench.json and bench.png."""
    from asrq.device.build import RunnerBuild, build_runner
    from asrq.device.harness import bench_device, probe
    from asrq.device.transport import parse_target

    transport = parse_target(target, workdir, identity, list(ssh_options))
    if runner_bin is not None:
        if not runner_bin.is_file():
            raise AsrqError(f"{runner_bin}: runner binary not found")
        root = runner_libs or runner_bin.parent
        root = root.parent if root.name == "lib" else root
        runner = RunnerBuild(runner_bin, arch or "aarch64", root)
        for lib in runner.libs:
            if not lib.is_file():
                raise AsrqError(
                    f"{lib}: not found (--runner-libs names the package root or its lib/)"
                )
    else:
        if arch is None:
            machine = probe(transport)["machine"]
            arch = "aarch64" if machine in ("aarch64", "arm64", "armv8l") else "host"
        click.echo(f"building the runner ({arch}) ...", err=True)
        runner = build_runner(arch)  # type: ignore[arg-type]
    result = bench_device(
        model_dir,
        transport,
        runner,
        wavs,
        threads,
        name,
        out_root,
        warmup,
        pin=not no_pin,
        cleanup=not keep,
        log=lambda s: click.echo(s, err=True),
    )
    summary = {
        "device": result["device"],
        "emulated": result["emulated"],
        "runs": [
            {k: r[k] for k in ("threads", "rtf", "chunk_latency_ms", "load_ms", "peak_rss_mb")}
            for r in result["runs"]
        ],
        "out": str(Path(out_root) / result["device"] / "bench.json"),
    }
    click.echo(json.dumps(summary, indent=1))
