"""Who is on the other end of a gRPC call, from the client certificate TLS verified."""

from __future__ import annotations

from typing import Any

from protos.contract import ADMIN_CN_PREFIX, COORDINATOR_CN, NODE_CN_PREFIX

__all__ = ["peer_role"]


def peer_role(context: Any) -> tuple[str, str]:
    """(role, name) of the caller: ("coordinator", ""), ("node", id), ("admin", name),
    or ("", "") when the channel carried no verified client certificate."""
    auth = context.auth_context()
    cns = auth.get("x509_common_name") or []
    if len(cns) != 1:
        return "", ""
    cn = cns[0].decode(errors="replace")
    if cn == COORDINATOR_CN:
        return "coordinator", ""
    if cn.startswith(NODE_CN_PREFIX):
        return "node", cn[len(NODE_CN_PREFIX) :]
    if cn.startswith(ADMIN_CN_PREFIX):
        return "admin", cn[len(ADMIN_CN_PREFIX) :]
    return "", ""
