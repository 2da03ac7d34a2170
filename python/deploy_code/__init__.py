"""asyncio client of ``deploy-code serve``.

    import asyncio
    from deploy_code import DeployCode

    async def main():
        async with DeployCode("127.0.0.1:8401", token=TOKEN) as dc:
            events = dc.monitor_deployment()
            await events.ready()
            result = await dc.deploy()
            async for event in events:
                print(event.kind, event.data)
            health = await dc.wait_for_healthy(timeout=60)

    asyncio.run(main())

The stubs in ``deploy_code.v1`` are generated from
``proto/deploy_code/v1/deploy_code.proto`` (see ``python/README.md``).
"""

from .client import DeployCode, EventStream, TLS
from .errors import (
    AuthenticationError,
    ConfigError,
    DeployCodeError,
    LockedError,
    PermissionDeniedError,
    StalePlanError,
)
from .results import (
    AuditEntry,
    Deployment,
    Event,
    Health,
    Plan,
    RunResult,
    ServiceHealth,
    ServiceStatus,
    Status,
    Validation,
)

__all__ = [
    "AuditEntry",
    "AuthenticationError",
    "ConfigError",
    "DeployCode",
    "DeployCodeError",
    "Deployment",
    "Event",
    "EventStream",
    "Health",
    "LockedError",
    "PermissionDeniedError",
    "Plan",
    "RunResult",
    "ServiceHealth",
    "ServiceStatus",
    "StalePlanError",
    "Status",
    "TLS",
    "Validation",
]
