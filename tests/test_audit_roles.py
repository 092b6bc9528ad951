"""The audit log's role of an actor: a user's role, or `system` for the gateway itself
(issue 16, item 13: the gateway's actions were recorded as an admin's)."""

from __future__ import annotations

from gateway.core.auth import SYSTEM, SYSTEM_ROLE, Principal, Role


def test_the_gateway_is_audited_as_system_and_a_user_by_role() -> None:
    assert SYSTEM.audit_role == SYSTEM_ROLE == "system"
    assert SYSTEM_ROLE not in {r.value for r in Role}  # no user can hold it
    assert Principal(3, "li.wei", Role.ADMIN).audit_role == "admin"
    assert Principal(4, "x", Role.TENANT, tenant_id="tn-a").audit_role == "tenant"
