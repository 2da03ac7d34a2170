"""The asyncio client ``DeployCode``."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import grpc

from .errors import DeployCodeError, from_rpc_error
from .results import (
    AuditEntry,
    Deployment,
    Event,
    Health,
    Plan,
    RunResult,
    Status,
    Validation,
)
from .v1 import deploy_code_pb2 as pb
from .v1 import deploy_code_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class TLS:
    """TLS to the server: ``ca`` checks its certificate (PEM bytes or a path;
    the system roots when None); ``cert`` and ``key`` are a client
    certificate, for a server that requires one."""

    ca: Union[bytes, str, Path, None] = None
    cert: Union[bytes, str, Path, None] = None
    key: Union[bytes, str, Path, None] = None


def _pem(v: Union[bytes, str, Path, None]) -> Optional[bytes]:
    if v is None or isinstance(v, bytes):
        return v
    return Path(v).read_bytes()


class EventStream:
    """The events of one run: those of a run under way (from its start), or
    else of the next one, ending after its ``finished`` event. The call is
    made when the stream is created; ``await stream.ready()`` returns once
    the server has subscribed it, so that a run started afterwards cannot be
    missed."""

    def __init__(self, call, whole_run: bool = True):
        self._call = call
        self._whole_run = whole_run
        self._done = False

    async def ready(self) -> None:
        try:
            await self._call.initial_metadata()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        if msg is grpc.aio.EOF:
            self._done = True
            raise StopAsyncIteration
        event = Event(kind=msg.kind, data=json.loads(msg.json))
        if self._whole_run and event.kind == "finished":
            self._done = True
            self._call.cancel()
        return event


class DeployCode:
    """A client of one ``deploy-code serve``.

    ``address`` is ``host:port``; ``token`` a JWT sent as a bearer token;
    ``tls`` True (system roots), a :class:`TLS`, or None/False for plain
    HTTP/2 (loopback)."""

    def __init__(
        self,
        address: str,
        token: Optional[str] = None,
        tls: Union[bool, TLS, None] = None,
    ):
        self.address = address
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls:
            t = tls if isinstance(tls, TLS) else TLS()
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(t.ca),
                private_key=_pem(t.key),
                certificate_chain=_pem(t.cert),
            )
            self._channel = grpc.aio.secure_channel(address, creds)
        else:
            self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.DeployCodeStub(self._channel)

    async def __aenter__(self) -> "DeployCode":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request):
        try:
            return await method(request, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def validate(self) -> Validation:
        """Checks the server's configuration; raises ConfigError when invalid."""
        r = await self._call(self._stub.Validate, pb.ValidateRequest())
        return Validation.from_json(r.json)

    async def plan(self, targets: Sequence[str] = (), destroy: bool = False) -> Plan:
        r = await self._call(
            self._stub.Plan, pb.PlanRequest(targets=list(targets), destroy=destroy)
        )
        return Plan.from_reply(r)

    async def apply(
        self, plan: Union[Plan, bytes], force: bool = False, no_rollback: bool = False
    ) -> RunResult:
        """Applies a saved plan exactly (or raises StalePlanError)."""
        data = plan.data if isinstance(plan, Plan) else plan
        r = await self._call(
            self._stub.Apply,
            pb.ApplyRequest(plan=data, force=force, no_rollback=no_rollback),
        )
        return RunResult.from_reply(r)

    async def deploy(self, targets: Sequence[str] = ()) -> RunResult:
        """Plans, then applies that plan when it changes anything."""
        plan = await self.plan(targets=targets)
        if not plan.has_changes:
            return RunResult(revision=0, outcome="unchanged", elapsed_ms=0)
        return await self.apply(plan)

    async def status(self) -> Status:
        r = await self._call(self._stub.Status, pb.StatusRequest())
        return Status.from_json(r.json)

    async def health(self) -> Health:
        r = await self._call(self._stub.Health, pb.HealthRequest())
        return Health.from_reply(r)

    async def wait_for_healthy(self, timeout: float = 60.0, interval: float = 0.5) -> Health:
        """Probes until every deployed service is healthy; raises
        DeployCodeError (code ``TIMEOUT``) with the last answer after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            h = await self.health()
            if h.healthy:
                return h
            if time.monotonic() >= deadline:
                bad = ", ".join(f"{s.name}: {s.detail}" for s in h.services if not s.healthy)
                raise DeployCodeError("TIMEOUT", f"not healthy after {timeout} s: {bad}")
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def monitor_deployment(self) -> EventStream:
        """An async iterator of the events of the run under way or the next
        one, ending after its ``finished`` event."""
        return EventStream(self._stub.WatchEvents(pb.WatchRequest(), metadata=self._metadata))

    def watch_events(self) -> EventStream:
        """Every event of every run, until cancelled."""
        return EventStream(
            self._stub.WatchEvents(pb.WatchRequest(), metadata=self._metadata), whole_run=False
        )

    async def rollback(self, revision: Optional[int] = None) -> RunResult:
        """Returns to an earlier successful revision (the previous one by default)."""
        req = pb.RollbackRequest() if revision is None else pb.RollbackRequest(revision=revision)
        return RunResult.from_reply(await self._call(self._stub.Rollback, req))

    async def restart(self, services: Sequence[str] = ()) -> RunResult:
        r = await self._call(self._stub.Restart, pb.RestartRequest(services=list(services)))
        return RunResult.from_reply(r)

    async def destroy(self, targets: Sequence[str] = ()) -> RunResult:
        r = await self._call(self._stub.Destroy, pb.DestroyRequest(targets=list(targets)))
        return RunResult.from_reply(r)

    async def history(self, limit: int = 20) -> List[Deployment]:
        r = await self._call(self._stub.History, pb.HistoryRequest(limit=limit))
        return Deployment.list_from_json(r.json)

    async def backup(self, path: str) -> dict:
        """State maintenance (role `admin`): a consistent copy of the state
        file at `path` on the server's machine; the command's JSON answer."""
        r = await self._call(self._stub.Backup, pb.BackupRequest(path=path))
        return json.loads(r.json) if r.json.strip() else {}

    async def unlock(self, force: bool = False) -> dict:
        """State maintenance (role `admin`): releases the lock of a run that
        died (`force` also when its holder is alive); the command's JSON answer."""
        r = await self._call(self._stub.Unlock, pb.UnlockRequest(force=force))
        return json.loads(r.json) if r.json.strip() else {}

    async def audit(self, limit: int = 100) -> List[AuditEntry]:
        """The audit events of the state, newest first (every call, refused ones too)."""
        r = await self._call(self._stub.Audit, pb.AuditRequest(limit=limit))
        return [
            AuditEntry(e.at, e.subject, e.role, e.call, e.outcome, e.detail) for e in r.entries
        ]
