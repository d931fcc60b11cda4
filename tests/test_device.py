"""``asrq device``: target parsing and the ssh / adb command lines (fast), then the harness for
real over the local transport (CLI), over ssh to an sshd this test starts on 127.0.0.1, and
over the adb code path with a stand-in ``adb`` that runs its shell/push/pull on this machine
(no Android device can be had here; the argv the harness builds is what a real adb gets)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from asrq.cli.device import device as device_cmd
from asrq.decode.streaming import stream_decode
from asrq.device.build import MODEL_FILES, RUNNER_LIBS, RunnerBuild, build_runner
from asrq.device.harness import bench_device, cpu_mask, pick_cores, probe
from asrq.device.transport import AdbTransport, LocalTransport, SshTransport, parse_target
from asrq.runtime.audio import load_features
from asrq.runtime.heads import load_exported
from asrq.utils.io import AsrqError
from tests.shared import shared_tiny_export

REAL = Path("/work/shared/data/real")
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
SPEECH = sorted((REAL / "LibriSpeech" / "test-clean").rglob("*.flac"))


# --------------------------------------------------------------------------------------------
# fast: targets, command lines, core choice
# --------------------------------------------------------------------------------------------
def test_parse_target():
    assert isinstance(parse_target("local"), LocalTransport)
    s = parse_target("ssh:pi@board")
    assert isinstance(s, SshTransport) and s.destination == "pi@board" and s.port is None
    s = parse_target("ssh:pi@10.0.0.2:2222", workdir="/tmp/w", identity="/k")
    assert (s.destination, s.port, s.workdir, s.identity) == ("pi@10.0.0.2", 2222, "/tmp/w", "/k")
    a = parse_target("adb:R58M123")
    assert isinstance(a, AdbTransport) and a.serial == "R58M123"
    assert a.workdir == "/data/local/tmp/asrq" and a.name == "adb:R58M123"
    for bad in ("ssh:board", "ssh:pi@board:x", "adb:", "usb:1", "local:x", "ssh:"):
        with pytest.raises(AsrqError, match="--target"):
            parse_target(bad)


def test_adb_command_construction():
    a = AdbTransport(serial="R58M123")
    line = "mkdir -p /data/local/tmp/asrq && cd /data/local/tmp/asrq && ls"
    assert a.run_argv("ls") == ["adb", "-s", "R58M123", "shell", line]
    assert a.push_argv(Path("/x/asrq-runner"), "asrq-runner") == [
        "adb",
        "-s",
        "R58M123",
        "push",
        "/x/asrq-runner",
        "/data/local/tmp/asrq/asrq-runner",
    ]
    assert a.pull_argv("result_t1.json", Path("/o/r.json")) == [
        "adb",
        "-s",
        "R58M123",
        "pull",
        "/data/local/tmp/asrq/result_t1.json",
        "/o/r.json",
    ]
    assert a.pull_argv("/sdcard/x", Path("y"))[4] == "/sdcard/x"  # absolute paths stay


def test_ssh_command_construction():
    s = SshTransport(
        destination="pi@board",
        port=2222,
        identity="/k",
        workdir="/tmp/w dir",
        options=["StrictHostKeyChecking=no"],
    )
    opts = [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={tempfile.gettempdir()}/asrq-ssh-%C",
        "-o",
        "ControlPersist=20",
        "-o",
        "StrictHostKeyChecking=no",
        "-i",
        "/k",
    ]
    assert s.run_argv("ls") == [
        "ssh",
        *opts,
        "-p",
        "2222",
        "pi@board",
        "mkdir -p '/tmp/w dir' && cd '/tmp/w dir' && ls",
    ]
    assert s.push_argv(Path("a.wav"), "wavs/a.wav") == [
        "scp",
        "-q",
        *opts,
        "-P",
        "2222",
        "a.wav",
        "pi@board:/tmp/w dir/wavs/a.wav",
    ]


def test_pick_cores_prefers_the_fastest():
    big_little = {
        0: 1800000,
        1: 1800000,
        2: 1800000,
        3: 1800000,
        4: 2400000,
        5: 2400000,
        6: 2400000,
        7: 3000000,
    }
    assert pick_cores(big_little, 1) == [7]
    assert pick_cores(big_little, 2) == [4, 7]
    assert pick_cores(big_little, 4) == [4, 5, 6, 7]
    assert pick_cores({0: 0, 1: 0}, 4) == [0, 1]  # no cpufreq (VMs): the first cores
    assert cpu_mask([4, 7]) == "90" and cpu_mask([0]) == "1" and cpu_mask(range(12)) == "fff"


def test_probe_local(tmp_path: Path):
    info = probe(LocalTransport(workdir=str(tmp_path)))
    assert info["machine"] in ("x86_64", "aarch64") and len(info["cpus"]) >= 1
    assert "taskset" in info["tools"]


# --------------------------------------------------------------------------------------------
# slow: the harness for real
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def runner() -> RunnerBuild:
    return build_runner("host")


@pytest.fixture(scope="module")
def audio() -> list[Path]:
    """Two real utterances (flac: the harness converts them to 16 kHz PCM wav)."""
    assert len(SPEECH) >= 2, f"{REAL}: expected LibriSpeech test-clean flac files"
    return sorted(SPEECH, key=lambda p: p.stat().st_size)[:2]


@pytest.fixture(scope="module")
def reference_tokens(exported: Path, audio: list[Path]) -> list[list[int]]:
    comp = load_exported(exported, "executorch")
    return [stream_decode(comp, load_features(p)) for p in audio]


def _check_result(res: dict, out_dir: Path, threads: list[int], ref: list[list[int]]) -> None:
    assert (out_dir / "bench.json").is_file() and (out_dir / "bench.png").stat().st_size > 1000
    assert json.loads((out_dir / "bench.json").read_text()) == res
    assert [r["threads"] for r in res["runs"]] == threads
    for r in res["runs"]:
        lat = r["chunk_latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and r["rtf"] > 0 and r["peak_rss_mb"] > 1
        assert r["cpus"] is not None and len(r["cpus"]) == min(
            r["threads"], len(res["core_max_khz"])
        )
        assert re.search(r"taskset [0-9a-f]+ \./asrq-runner", r["command"])
    assert [f["tokens"] for f in res["files"]] == ref
    assert res["transcripts_agree_across_threads"] and not res["emulated"]


@pytest.mark.slow
def test_device_bench_local_cli(
    exported: Path, audio: list[Path], reference_tokens, tmp_path: Path
):
    args = [
        str(exported),
        "--target",
        "local",
        "--threads",
        "1,2",
        "--out",
        str(tmp_path),
        "--name",
        "host",
    ] + [a for p in audio for a in ("--wavs", str(p))]
    res = CliRunner().invoke(device_cmd, ["bench", *args])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["out"] == str(tmp_path / "host" / "bench.json")
    result = json.loads((tmp_path / "host" / "bench.json").read_text())
    _check_result(result, tmp_path / "host", [1, 2], reference_tokens)
    assert result["transport"] == "local" and result["files"][0]["audio"] == str(audio[0])


@pytest.mark.slow
def test_device_bench_bad_inputs_are_clear_errors(
    exported: Path, runner: RunnerBuild, tmp_path: Path
):
    res = CliRunner().invoke(device_cmd, ["bench", str(tmp_path / "nomodel"), "--wavs", "x.wav"])
    assert res.exit_code != 0 and "nomodel: model directory not found" in str(res.exception)
    with pytest.raises(AsrqError, match="nope.flac: audio file not found"):
        bench_device(
            exported, LocalTransport(), runner, [tmp_path / "nope.flac"], out_root=tmp_path
        )


# ---- ssh: a throwaway sshd on 127.0.0.1 ----------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """sshd -D -f CONFIG on a random high port of 127.0.0.1 with a throwaway host key and an
    authorized client key; yields (user@127.0.0.1:port, identity file, ssh options)."""
    sshd_bin, keygen = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh-keygen")
    if not Path(sshd_bin).is_file() or keygen is None or shutil.which("ssh") is None:
        pytest.skip(
            "openssh-server / openssh-client not installed (Debian packages; make system-deps)"
        )
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for key in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", stat.S_IRUSR | stat.S_IWUSR)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        # scp >= 9 speaks SFTP
        + next((f"Subsystem sftp {p}\n" for p in SFTP_SERVERS if Path(p).is_file()), "")
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    log = open(d / "sshd.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log
    )
    try:
        deadline = time.time() + 15
        while time.time() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()[-1000:]}")
        import getpass

        opts = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]
        yield f"{getpass.getuser()}@127.0.0.1:{port}", str(d / "client_key"), opts
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_device_bench_over_ssh(
    sshd, exported: Path, runner: RunnerBuild, audio: list[Path], reference_tokens, tmp_path: Path
):
    dest, key, opts = sshd
    t = parse_target(
        f"ssh:{dest}", workdir=str(tmp_path / "remote"), identity=key, ssh_options=opts
    )
    assert isinstance(t, SshTransport)
    res = bench_device(
        exported, t, runner, audio, threads=[1], name="loopback", out_root=tmp_path / "devices"
    )
    _check_result(res, tmp_path / "devices" / "loopback", [1], reference_tokens)
    assert res["transport"] == "ssh" and res["target"] == f"ssh:{dest.rsplit(':', 1)[0]}"
    # cleaned up on the target
    assert not any((tmp_path / "remote").glob("*.so"))


# ---- adb: the same code path with a stand-in adb ------------------------------------------
FAKE_ADB = """#!/bin/sh
# stand-in for adb on this machine: -s SERIAL shell CMD | push SRC DST | pull SRC DST
[ "$1" = "-s" ] || exit 64
printf '%s\\n' "$*" >> "$(dirname "$0")/adb.log"
shift 2
case "$1" in
  shell) shift; exec sh -c "$1" ;;
  push) mkdir -p "$(dirname "$3")" && cp "$2" "$3" ;;
  pull) cp "$2" "$3" ;;
  *) exit 64 ;;
esac
"""


@pytest.mark.slow
def test_device_bench_adb_code_path(
    exported: Path, runner: RunnerBuild, audio: list[Path], reference_tokens, tmp_path: Path
):
    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB)
    adb.chmod(0o755)
    t = AdbTransport(serial="emulator-5554", adb=str(adb), workdir=str(tmp_path / "data_local_tmp"))
    res = bench_device(exported, t, runner, audio[:1], threads=[2], out_root=tmp_path / "devices")
    _check_result(res, tmp_path / "devices" / "emulator-5554", [2], reference_tokens[:1])
    log = (tmp_path / "adb.log").read_text().splitlines()
    pushed = [line.split()[4] for line in log if line.split()[2] == "push"]
    assert {Path(p).name for p in pushed} >= {"asrq-runner", *RUNNER_LIBS, *MODEL_FILES, "w000.wav"}
    assert all(line.startswith("-s emulator-5554 ") for line in log)
    assert any(re.search(r"taskset [0-9a-f]+ \./asrq-runner .*--threads 2", line) for line in log)
