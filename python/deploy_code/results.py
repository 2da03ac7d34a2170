"""Typed results: dataclasses over the server's documents (the CLI's
``--format json`` output; ``raw`` keeps the whole document)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Validation:
    valid: bool
    services: int
    enabled: int
    disabled: int
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, text: str) -> "Validation":
        d = json.loads(text)
        return cls(
            valid=bool(d.get("valid")),
            services=int(d.get("services", 0)),
            enabled=int(d.get("enabled", 0)),
            disabled=int(d.get("disabled", 0)),
            raw=d,
        )


@dataclass(frozen=True)
class Plan:
    """A saved plan: pass it to ``DeployCode.apply`` unchanged."""

    data: bytes = field(repr=False)
    has_changes: bool
    feasible: bool
    summary: Dict[str, int]
    phases: List[List[str]]
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_reply(cls, reply: Any) -> "Plan":
        d = json.loads(reply.json)
        return cls(
            data=reply.plan,
            has_changes=reply.has_changes,
            feasible=reply.feasible,
            summary=dict(d.get("summary", {})),
            phases=[list(p) for p in d.get("phases", [])],
            raw=d,
        )


@dataclass(frozen=True)
class RunResult:
    """The result of apply, deploy, destroy, rollback or restart."""

    revision: int
    outcome: str
    elapsed_ms: int

    @classmethod
    def from_reply(cls, reply: Any) -> "RunResult":
        return cls(revision=reply.revision, outcome=reply.outcome, elapsed_ms=reply.elapsed_ms)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    status: str
    healthy: Optional[bool]
    instances: List[Dict[str, Any]]
    raw: Dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Status:
    services: List[ServiceStatus]
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, text: str) -> "Status":
        d = json.loads(text)
        services = []
        for s in d.get("services", []):
            health = s.get("health")
            services.append(
                ServiceStatus(
                    name=s.get("service", ""),
                    status=s.get("status", ""),
                    healthy=None if health is None else bool(health.get("healthy")),
                    instances=list(s.get("instances", [])),
                    raw=s,
                )
            )
        return cls(services=services, raw=d)

    def service(self, name: str) -> Optional[ServiceStatus]:
        return next((s for s in self.services if s.name == name), None)


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class Health:
    healthy: bool
    services: List[ServiceHealth]
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_reply(cls, reply: Any) -> "Health":
        d = json.loads(reply.json)
        return cls(
            healthy=reply.healthy,
            services=[
                ServiceHealth(s.get("service", ""), bool(s.get("healthy")), s.get("detail", ""))
                for s in d.get("services", [])
            ],
            raw=d,
        )


@dataclass(frozen=True)
class Deployment:
    revision: int
    outcome: str
    started_at: str
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def list_from_json(cls, text: str) -> List["Deployment"]:
        d = json.loads(text)
        return [
            cls(
                revision=int(x.get("revision", 0)),
                outcome=str(x.get("outcome", "")),
                started_at=str(x.get("started_at", "")),
                raw=x,
            )
            for x in d.get("deployments", [])
        ]


@dataclass(frozen=True)
class AuditEntry:
    at: str
    subject: str
    role: str
    call: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class Event:
    """One event of a run, as ``deploy-code apply --format json`` prints it.
    ``kind`` is its ``event`` field (``phase_started``, ``finished``, ...)."""

    kind: str
    data: Dict[str, Any]

    @property
    def at(self) -> str:
        return str(self.data.get("at", ""))
