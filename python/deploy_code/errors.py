"""Exceptions of the client: each carries the server's error code."""

from __future__ import annotations

from typing import Optional

import grpc

CODE_KEY = "deploy-code-code"
EXIT_KEY = "deploy-code-exit"


class DeployCodeError(Exception):
    """A call failed. ``code`` is deploy-code's error code (``E011``, ...), or
    the gRPC status name (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) when the
    call was refused before it ran; ``exit_code`` is what the CLI would have
    returned, when it ran."""

    def __init__(
        self,
        code: str,
        message: str,
        status: Optional[grpc.StatusCode] = None,
        exit_code: Optional[int] = None,
    ):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.exit_code = exit_code


class AuthenticationError(DeployCodeError):
    """No token, a bad signature, an expired token, a wrong issuer or audience."""


class PermissionDeniedError(DeployCodeError, PermissionError):
    """The token's role lacks the call's permission; the message names the
    roles that have it."""


class LockedError(DeployCodeError):
    """Another run holds the state lock (E011)."""


class StalePlanError(DeployCodeError):
    """The saved plan no longer matches the state or configuration (E013)."""


class ConfigError(DeployCodeError):
    """The configuration is missing or invalid (E001, E002)."""


def from_rpc_error(e: grpc.aio.AioRpcError) -> DeployCodeError:
    """The exception for a failed call."""
    status = e.code()
    md = {}
    for k, v in list(e.trailing_metadata() or ()) + list(e.initial_metadata() or ()):
        md.setdefault(k, v)
    code = md.get(CODE_KEY) or status.name
    exit_code = md.get(EXIT_KEY)
    exit_code = int(exit_code) if exit_code and exit_code.isdigit() else None
    message = e.details() or ""
    if status == grpc.StatusCode.UNAUTHENTICATED:
        cls = AuthenticationError
    elif status == grpc.StatusCode.PERMISSION_DENIED:
        cls = PermissionDeniedError
    elif code == "E011":
        cls = LockedError
    elif code == "E013":
        cls = StalePlanError
    elif code in ("E001", "E002"):
        cls = ConfigError
    else:
        cls = DeployCodeError
    return cls(code, message, status, exit_code)
