"""Fixtures: a real `deploy-code serve` on loopback over a temporary
configuration and state, stopped (by its pid) when the test ends.

The binary is `$DEPLOY_CODE_BIN`, else `target/debug/deploy-code` of the
repository (or of `$CARGO_TARGET_DIR`)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

REPO = Path(__file__).resolve().parents[2]
# The tests exercise the working tree's package (an installed copy may be older).
sys.path.insert(0, str(REPO / "python"))
SECRET = "jwt-test-secret-5e1f-0123456789abcdef"


def binary() -> str:
    if os.environ.get("DEPLOY_CODE_BIN"):
        return os.environ["DEPLOY_CODE_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / "deploy-code"
    if not path.exists():
        pytest.fail(f"no deploy-code binary at {path}: run `cargo build` or set DEPLOY_CODE_BIN")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(sub: str, role=None, roles=None, secret: str = SECRET, ttl: int = 600) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + ttl, "iat": int(time.time())}
    if role is not None:
        claims["role"] = role
    if roles is not None:
        claims["roles"] = roles
    return jwt.encode(claims, secret, algorithm="HS256")


def web_service(port: int, name: str = "web", extra: str = "") -> str:
    """A one-service configuration body: a Python HTTP server gated by its port."""
    return f"""
services:
  {name}:
    command: python3
    args: ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    ports: [{{container_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 2, retries: 20}}
{extra}"""


class Server:
    def __init__(self, directory: Path, config: str, listen: str, env=None):
        self.dir = directory
        self.config = directory / "deploy-code.yaml"
        self.config.write_text(config)
        self.listen = listen
        e = dict(os.environ)
        e["JWT_SECRET"] = SECRET
        e.pop("DEPLOY_CODE_STATE", None)
        e.update(env or {})
        self.env = e
        self.proc = subprocess.Popen(
            [binary(), "-c", str(self.config), "serve", "--listen", listen],
            cwd=directory,
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"serve did not start: {line}{out}{err}")
        self.address = line.split("listening on ")[1].split(" ")[0]

    def cli(self, *args, check=True):
        """Runs the CLI on the same configuration and state."""
        r = subprocess.run(
            [binary(), "-c", str(self.config), *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"{args} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever the tests deployed goes with them.
        self.cli("destroy", "--auto-approve", check=False)


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(config: str, listen: str = None, env=None) -> Server:
        s = Server(tmp_path, config, listen or f"127.0.0.1:{free_port()}", env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
