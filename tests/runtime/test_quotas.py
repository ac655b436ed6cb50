"""What one client may hold, against a real xpud: a server-default lease reaps contexts
opened without one, and quotas bound contexts, allocations and queued work (issue 15
item 10)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.engine import Limits
from openxpu_runtime.errors import NotFound, QuotaExceeded
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.integration
GIB = 1 << 30
DEFAULT_LEASE = Limits().default_lease_seconds


def test_a_context_without_a_lease_gets_the_default_and_is_reaped(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x1-2", "--clock", "manual").start()
    try:
        with proc.client() as c:
            # A raw-API client: no lease asked for, no heartbeat thread.
            ctx = c.open_context(api.ContextRequest(pid=1, name="raw", devices=["0"]))
            assert ctx.lease_seconds == DEFAULT_LEASE
            c.allocate(ctx.id, "0", GIB)
            c.advance_clock(DEFAULT_LEASE * 0.7)
            c.allocate(ctx.id, "0", GIB)  # any call on the context renews its lease
            c.advance_clock(DEFAULT_LEASE * 0.7)
            assert c.device(0).memory_used_bytes == 2 * GIB
        # The client crashes; so does xpud: a restart must not make the leak permanent.
        proc.stop(signal.SIGKILL)
        proc.start()
        with proc.client() as c:
            assert [p.id for p in c.processes()] == [ctx.id]
            c.advance_clock(DEFAULT_LEASE + 1)
            assert c.processes() == []
            assert c.device(0).memory_used_bytes == 0
            with pytest.raises(NotFound):
                c.heartbeat(ctx.id)
    finally:
        proc.stop()


def test_quotas_refuse_with_a_clear_error_and_free_again(short_root: Path) -> None:
    proc = XpudProcess(
        short_root,
        "--profile",
        "x1-2",
        "--clock",
        "manual",
        "--max-contexts",
        "2",
        "--max-allocations",
        "3",
        "--max-queued-launches",
        "2",
    ).start()

    def open_one(c: XpudClient) -> api.Context:
        return c.open_context(api.ContextRequest(pid=1, name="q", devices=["0", "1"]))

    try:
        with proc.client() as c:
            first, second = open_one(c), open_one(c)
            with pytest.raises(QuotaExceeded, match="2 contexts, its limit"):
                open_one(c)
            c.close_context(second.id)
            open_one(c)

            handles = [c.allocate(first.id, str(i % 2), 1).handle for i in range(3)]
            with pytest.raises(QuotaExceeded, match="3 allocations, the limit per context"):
                c.allocate(first.id, "1", 1)
            c.free(first.id, handles[0])
            c.allocate(first.id, "1", 1)

            ops = c.inventory().devices[0].peak_ops_per_second  # one second of work each
            c.launch(first.id, "0", ops)
            c.launch(first.id, "1", ops)  # the quota counts across the context's devices
            with pytest.raises(QuotaExceeded, match="2 launches queued"):
                c.launch(first.id, "0", ops)
            c.advance_clock(1.5)
            c.launch(first.id, "0", ops)
    finally:
        proc.stop()
