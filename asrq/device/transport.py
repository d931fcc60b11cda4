"""How the harness reaches a device: one :class:`Transport` protocol (``run``, ``push``, ``pull``
over a work directory on the target) with three implementations that share every other step.

==========================  ====================================================================
target string               transport
==========================  ====================================================================
``local``                   :class:`LocalTransport`: this machine, a work dir under a temp dir
``ssh:USER@HOST[:PORT]``    :class:`SshTransport`: ``ssh`` / ``scp`` (batch mode, key auth)
``adb:SERIAL``              :class:`AdbTransport`: ``adb -s SERIAL shell`` / ``push`` / ``pull``
==========================  ====================================================================

Commands are argv lists built by ``*_argv`` methods (so their construction is testable without a
device) and run with :func:`subprocess.run`. Remote commands are one POSIX ``sh`` line (Android's
``sh`` included); arguments are quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from asrq.utils.io import AsrqError


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """A target device: a work dir there, shell commands in it, files in and out."""

    name: str  # e.g. "local", "ssh:pi@board", "adb:R58M123"
    workdir: str  # absolute path on the target
    kind: str  # "local" | "ssh" | "adb"

    def run(self, command: str, timeout: float = 600.0) -> RunResult:
        """Run one ``sh`` command line on the target (cwd: :attr:`workdir`)."""
        ...

    def push(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` (relative to :attr:`workdir` unless absolute)."""
        ...

    def pull(self, remote: str, local: Path) -> None:
        """Copy ``remote`` (relative to :attr:`workdir` unless absolute) to a local file."""
        ...


def _exec(argv: list[str], timeout: float, what: str) -> RunResult:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise AsrqError(f"{argv[0]} not found ({what}); install it or pick another --target") from e
    except subprocess.TimeoutExpired as e:
        raise AsrqError(f"{what} timed out after {timeout:.0f} s: {' '.join(argv[:6])} ...") from e
    return RunResult(res.returncode, res.stdout, res.stderr)


def _check(res: RunResult, what: str) -> RunResult:
    if res.returncode != 0:
        raise AsrqError(
            f"{what} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}"
        )
    return res


@dataclass
class _Base:
    workdir: str = ""

    def abs(self, remote: str) -> str:
        return remote if remote.startswith("/") else f"{self.workdir.rstrip('/')}/{remote}"

    def shell_line(self, command: str) -> str:
        """The command as run on the target: in the work dir, created if needed."""
        w = shlex.quote(self.workdir)
        return f"mkdir -p {w} && cd {w} && {command}"


@dataclass
class LocalTransport(_Base):
    """This machine. ``workdir`` defaults to a fresh temp dir."""

    name: str = "local"
    kind: str = "local"
    owned: bool = False  # the work dir is a temp dir made here (removed after a bench)

    def __post_init__(self) -> None:
        if not self.workdir:  # created by the first command or copy (mkdir -p), not here
            self.workdir = (
                f"{tempfile.gettempdir()}/asrq-device-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
            self.owned = True

    def run_argv(self, command: str) -> list[str]:
        return ["sh", "-c", self.shell_line(command)]

    def run(self, command: str, timeout: float = 600.0) -> RunResult:
        return _exec(self.run_argv(command), timeout, f"local: {command[:60]}")

    def push(self, local: Path, remote: str) -> None:
        dst = Path(self.abs(remote))
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dst)

    def pull(self, remote: str, local: Path) -> None:
        src = Path(self.abs(remote))
        if not src.is_file():
            raise AsrqError(f"local: {src} not found on the target")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, local)


@dataclass
class SshTransport(_Base):
    """``ssh`` / ``scp`` to ``user@host`` (key auth, no prompts: ``BatchMode=yes``)."""

    destination: str = ""  # user@host
    port: int | None = None
    identity: str | None = None  # private key file
    options: list[str] = field(default_factory=list)  # extra -o KEY=VALUE
    name: str = ""
    kind: str = "ssh"

    def __post_init__(self) -> None:
        if not self.destination:
            raise AsrqError("ssh target needs USER@HOST")
        self.name = self.name or f"ssh:{self.destination}"
        self.workdir = self.workdir or "/tmp/asrq-device"

    def _opts(self, port_flag: str) -> list[str]:
        # one multiplexed connection for the many short commands and copies of a bench
        o = [
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
        ]
        for extra in self.options:
            o += ["-o", extra]
        if self.identity:
            o += ["-i", self.identity]
        if self.port:
            o += [port_flag, str(self.port)]
        return o

    def run_argv(self, command: str) -> list[str]:
        return ["ssh", *self._opts("-p"), self.destination, self.shell_line(command)]

    def push_argv(self, local: Path, remote: str) -> list[str]:
        return [
            "scp",
            "-q",
            *self._opts("-P"),
            str(local),
            f"{self.destination}:{self.abs(remote)}",
        ]

    def pull_argv(self, remote: str, local: Path) -> list[str]:
        return [
            "scp",
            "-q",
            *self._opts("-P"),
            f"{self.destination}:{self.abs(remote)}",
            str(local),
        ]

    def run(self, command: str, timeout: float = 600.0) -> RunResult:
        return _exec(self.run_argv(command), timeout, f"{self.name}: {command[:60]}")

    def push(self, local: Path, remote: str) -> None:
        parent = self.abs(remote).rsplit("/", 1)[0] or "/"
        _check(self.run(f"mkdir -p {shlex.quote(parent)}", 60), f"{self.name}: mkdir {parent}")
        _check(
            _exec(self.push_argv(local, remote), 600, f"{self.name}: push"),
            f"{self.name}: push {local}",
        )

    def pull(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        _check(
            _exec(self.pull_argv(remote, local), 600, f"{self.name}: pull"),
            f"{self.name}: pull {remote}",
        )


@dataclass
class AdbTransport(_Base):
    """``adb -s SERIAL``: ``shell`` / ``push`` / ``pull``; the work dir defaults to
    ``/data/local/tmp/asrq`` (writable and executable for the shell user)."""

    serial: str = ""
    adb: str = "adb"
    name: str = ""
    kind: str = "adb"

    def __post_init__(self) -> None:
        if not self.serial:
            raise AsrqError("adb target needs a device serial (adb devices)")
        self.name = self.name or f"adb:{self.serial}"
        self.workdir = self.workdir or "/data/local/tmp/asrq"

    def run_argv(self, command: str) -> list[str]:
        # adb shell joins its arguments into one remote sh line: pass exactly one
        return [self.adb, "-s", self.serial, "shell", self.shell_line(command)]

    def push_argv(self, local: Path, remote: str) -> list[str]:
        return [self.adb, "-s", self.serial, "push", str(local), self.abs(remote)]

    def pull_argv(self, remote: str, local: Path) -> list[str]:
        return [self.adb, "-s", self.serial, "pull", self.abs(remote), str(local)]

    def run(self, command: str, timeout: float = 600.0) -> RunResult:
        # old adb shells do not forward the exit status: print it and parse it back
        res = _exec(
            self.run_argv(command + "; echo __asrq_rc=$?"), timeout, f"{self.name}: {command[:60]}"
        )
        out, _, rc = res.stdout.rpartition("__asrq_rc=")
        code = int(rc.strip()) if rc.strip().isdigit() else res.returncode or 1
        return RunResult(code, out, res.stderr)

    def push(self, local: Path, remote: str) -> None:
        parent = self.abs(remote).rsplit("/", 1)[0] or "/"
        _check(self.run(f"mkdir -p {shlex.quote(parent)}", 60), f"{self.name}: mkdir {parent}")
        _check(
            _exec(self.push_argv(local, remote), 600, f"{self.name}: push"),
            f"{self.name}: push {local}",
        )

    def pull(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        _check(
            _exec(self.pull_argv(remote, local), 600, f"{self.name}: pull"),
            f"{self.name}: pull {remote}",
        )


def parse_target(
    target: str,
    workdir: str | None = None,
    identity: str | None = None,
    ssh_options: list[str] | None = None,
) -> LocalTransport | SshTransport | AdbTransport:
    """``local`` | ``ssh:USER@HOST[:PORT]`` | ``adb:SERIAL`` -> a transport."""
    kind, _, rest = target.partition(":")
    if kind == "local" and not rest:
        return LocalTransport(workdir=workdir or "")
    if kind == "ssh" and rest:
        dest, port = rest, None
        if ":" in rest:
            dest, _, p = rest.rpartition(":")
            if not p.isdigit():
                raise AsrqError(f"--target {target!r}: the port after ':' must be a number")
            port = int(p)
        if "@" not in dest or dest.startswith("@") or dest.endswith("@"):
            raise AsrqError(f"--target {target!r}: expected ssh:USER@HOST[:PORT]")
        return SshTransport(
            workdir=workdir or "",
            destination=dest,
            port=port,
            identity=identity,
            options=list(ssh_options or []),
        )
    if kind == "adb" and rest:
        return AdbTransport(workdir=workdir or "", serial=rest)
    raise AsrqError(f"--target {target!r}: expected local, ssh:USER@HOST[:PORT] or adb:SERIAL")
