"""coordinator/api.py: the refusal a caller with the wrong certificate gets."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from coordinator import api
from protos.contract import ADMIN_CN_PREFIX, node_cn


class Aborted(Exception):
    """What the fake context's abort raises, as grpc.aio's does."""


class Context:
    def __init__(self, cn: str) -> None:
        self.cn = cn

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self.cn.encode()]}

    async def abort(self, code: grpc.StatusCode, details: str) -> Any:
        raise Aborted(code, details)


@pytest.mark.parametrize(
    ("cn", "role", "details"),
    [
        (node_cn("0123456789abcdef"), "admin", "this call needs an admin certificate"),
        (ADMIN_CN_PREFIX + "alice", "node", "this call needs a node certificate"),
    ],
)
def test_the_wrong_certificate_is_refused_in_plain_english(cn: str, role: str, details: str) -> None:
    with pytest.raises(Aborted) as info:
        asyncio.run(api._require(Context(cn), role))
    assert info.value.args == (grpc.StatusCode.PERMISSION_DENIED, details)
