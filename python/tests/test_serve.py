"""The Python API against a real `deploy-code serve` on loopback."""

import asyncio
import json
import time

import pytest

from conftest import free_port, token, web_service

from deploy_code import (
    AuthenticationError,
    ConfigError,
    DeployCode,
    LockedError,
    PermissionDeniedError,
    StalePlanError,
)

SECURITY = """security: {auth: {enabled: true, method: JWT, jwt_secret: "{{ secret('JWT_SECRET') }}"}, rbac: {enabled: true}}
"""


def test_the_check_from_outside_exactly(serve):
    """`deploy-code serve --listen 127.0.0.1:18401` with the issue's
    `security:` and the default roles: a viewer can `status()` but not
    `apply()`, an operator can `deploy()` while `monitor_deployment()` yields
    the phase events, a token signed with another secret is refused, and the
    audit history shows all four calls with their subjects."""
    port = free_port()
    server = serve(SECURITY + web_service(port), listen="127.0.0.1:18401")
    assert server.address == "127.0.0.1:18401"

    async def main():
        viewer = DeployCode("127.0.0.1:18401", token=token("vera", role="viewer"))
        operator = DeployCode("127.0.0.1:18401", token=token("otto", role="operator"))
        forger = DeployCode(
            "127.0.0.1:18401", token=token("mallory", role="admin", secret="another-secret-0123456789abcdef0123")
        )
        admin = DeployCode("127.0.0.1:18401", token=token("ada", role="admin"))

        status = await viewer.status()
        assert status.services == []

        plan = await operator.plan()
        with pytest.raises(PermissionDeniedError) as denied:
            await viewer.apply(plan)
        assert isinstance(denied.value, PermissionError)
        assert denied.value.code == "PERMISSION_DENIED"
        assert "operator" in denied.value.message, denied.value.message
        assert "viewer" in denied.value.message, denied.value.message

        events = operator.monitor_deployment()
        await events.ready()
        result = await operator.deploy()
        assert result.outcome == "succeeded", result
        kinds = [e.kind async for e in events]
        assert "phase_started" in kinds and "phase_finished" in kinds, kinds
        assert kinds[-1] == "finished", kinds

        with pytest.raises(AuthenticationError) as refused:
            await forger.status()
        assert refused.value.code == "UNAUTHENTICATED"
        assert "signature" in refused.value.message

        entries = await admin.audit()
        seen = {(e.subject, e.call, e.outcome) for e in entries}
        assert ("vera", "Status", "succeeded") in seen, entries
        assert ("vera", "Apply", "denied") in seen, entries
        assert ("otto", "Apply", "succeeded") in seen, entries
        assert ("mallory", "Status", "unauthenticated") in seen, entries
        by_call = {(e.subject, e.call): e for e in entries}
        assert by_call[("vera", "Status")].role == "viewer"
        assert by_call[("otto", "Apply")].role == "operator"

        status = await viewer.status()
        assert [s.name for s in status.services] == ["web"]
        health = await viewer.wait_for_healthy(timeout=30)
        assert health.healthy
        for c in (viewer, operator, forger, admin):
            await c.close()

    asyncio.run(main())
    # The CLI reads the same history and audit events from the state.
    doc = json.loads(server.cli("--format", "json", "state", "history").stdout)
    assert [d["outcome"] for d in doc["deployments"]] == ["succeeded"]
    audit = json.loads(server.cli("--format", "json", "state", "audit").stdout)
    seen = {(c["subject"], c["role"], c["call"], c["outcome"]) for c in audit["calls"]}
    assert ("vera", "viewer", "Status", "succeeded") in seen, seen
    assert ("vera", "viewer", "Apply", "denied") in seen, seen
    assert ("otto", "operator", "Apply", "succeeded") in seen, seen
    assert any(s == "mallory" and o == "unauthenticated" for s, _, _, o in seen), seen
    table = server.cli("state", "audit").stdout
    assert "SUBJECT" in table and "otto" in table and "mallory" in table, table


def test_no_token_and_expired_tokens_never_reach_the_engine(serve):
    server = serve(SECURITY + web_service(free_port()))

    async def main():
        async with DeployCode(server.address) as anon:
            with pytest.raises(AuthenticationError) as e:
                await anon.plan()
            assert "bearer token" in e.value.message
        async with DeployCode(
            server.address, token=token("late", role="admin", ttl=-120)
        ) as late:
            with pytest.raises(AuthenticationError) as e:
                await late.destroy()
            assert "expired" in e.value.message
        async with DeployCode(server.address, token=token("nobody")) as roleless:
            with pytest.raises(PermissionDeniedError) as e:
                await roleless.status()
            assert "names no role" in e.value.message

    asyncio.run(main())
    # Nothing ran: no deployment was recorded.
    doc = json.loads(server.cli("--format", "json", "state", "history").stdout)
    assert doc["deployments"] == []


def test_a_second_mutating_call_gets_the_state_lock_error(serve, tmp_path):
    """While one apply waits on a slow health gate, a second gets E011, the
    same error a second CLI gets; the state lock is released afterwards."""
    slow, fast = free_port(), free_port()
    # `slow` opens its port only after a file appears: the test decides
    # when the first apply may finish.
    gate = tmp_path / "go"
    config = SECURITY + f"""
services:
  slow:
    command: python3
    args: ["-c", "import os, time, http.server as h\\nwhile not os.path.exists('{gate}'): time.sleep(0.05)\\nh.HTTPServer(('127.0.0.1', {slow}), h.SimpleHTTPRequestHandler).serve_forever()"]
    ports: [{{container_port: {slow}}}]
    health_check: {{endpoint: /, interval_seconds: 1, timeout_seconds: 2, retries: 100}}
"""
    server = serve(config)

    async def main():
        op = DeployCode(server.address, token=token("otto", role="operator"))
        plan = await op.plan()
        events = op.watch_events()
        await events.ready()
        first = asyncio.ensure_future(op.apply(plan))
        async for e in events:
            if e.kind == "action_started":
                break
        events.cancel()
        with pytest.raises(LockedError) as locked:
            await op.apply(plan)
        assert locked.value.code == "E011"
        assert locked.value.exit_code == 1
        cli = server.cli("apply", "--auto-approve", check=False)
        assert "E011" in cli.stderr, cli.stderr
        gate.write_text("go")
        result = await first
        assert result.outcome == "succeeded"
        # The lock is free again, and the old plan is stale now.
        with pytest.raises(StalePlanError) as stale:
            await op.apply(plan)
        assert stale.value.code == "E013"
        await op.close()

    asyncio.run(main())


def test_rollback_and_history_through_the_api(serve, tmp_path):
    port = free_port()
    server = serve(SECURITY + web_service(port))

    async def main():
        async with DeployCode(server.address, token=token("otto", role="operator")) as op:
            v = await op.validate()
            assert v.valid and v.services == 1
            good = server.config.read_text()
            server.config.write_text(good.replace("command: python3", "comand: python3"))
            with pytest.raises(ConfigError) as bad:
                await op.validate()
            assert bad.value.code == "E002" and "comand" in bad.value.message
            server.config.write_text(good)
            first = await op.deploy()
            assert first.revision >= 1
            server.config.write_text(
                SECURITY + web_service(port).replace('"127.0.0.1"]', '"127.0.0.1"]\n    env: {LEVEL: "2"}')
            )
            second = await op.deploy()
            assert second.revision > first.revision
            back = await op.rollback()
            assert back.outcome == "succeeded" and back.revision > second.revision
            history = await op.history()
            assert [d.revision for d in history][:3] == [
                back.revision,
                second.revision,
                first.revision,
            ]
            unchanged = await op.deploy()
            assert unchanged.outcome in ("succeeded", "unchanged")
            with pytest.raises(PermissionDeniedError) as e:
                await op.destroy()
            assert "admin" in e.value.message
            with pytest.raises(PermissionDeniedError) as e:
                await op.backup(str(tmp_path / "copy.db"))
            assert "admin" in e.value.message
        async with DeployCode(server.address, token=token("ada", role="admin")) as admin:
            # State maintenance is the admin's.
            await admin.backup(str(tmp_path / "copy.db"))
            assert (tmp_path / "copy.db").read_bytes()[:16] == b"SQLite format 3\0"
            await admin.unlock()
            gone = await admin.destroy()
            assert gone.outcome == "succeeded"
            assert (await admin.status()).services == []

    asyncio.run(main())


def test_events_reach_a_subscriber_within_50_ms(serve):
    """Measured: from the `at` stamp an event was written with to its arrival
    in Python. Printed for the record; asserted on the median."""
    server = serve(SECURITY + web_service(free_port()) + web_service(free_port(), "api").split("services:\n")[1])

    async def main():
        async with DeployCode(server.address, token=token("otto", role="operator")) as op:
            events = op.monitor_deployment()
            await events.ready()
            run = asyncio.ensure_future(op.deploy())
            delays = []
            async for e in events:
                written = time.mktime(time.strptime(e.at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
                frac = e.at[19:].rstrip("Z")
                if frac.startswith("."):
                    written += float("0" + frac)
                delays.append((time.time() - written) * 1000)
            await run
            delays.sort()
            p50 = delays[len(delays) // 2]
            print(f"event delivery: {len(delays)} events, p50 {p50:.1f} ms, max {delays[-1]:.1f} ms")
            assert p50 < 50, delays

    asyncio.run(main())


def test_sigterm_stops_the_server_while_a_subscriber_listens(serve):
    server = serve(SECURITY + web_service(free_port()))

    async def main():
        async with DeployCode(server.address, token=token("vera", role="viewer")) as v:
            events = v.watch_events()
            await events.ready()
            server.proc.send_signal(__import__("signal").SIGTERM)
            # The stream ends instead of holding the shutdown.
            rest = [e async for e in events]
            assert rest == []
        assert server.proc.wait(timeout=15) == 0

    asyncio.run(main())
