"""boto3 clients built from settings: retries, timeouts and endpoints in one place.

botocore's default ("legacy", few attempts, 60 s read timeout) is wrong for a worker under a
Dramatiq time limit: the time limit cannot interrupt a blocking socket read, so every call
gets its own connect/read timeout, and throttling is retried by botocore's adaptive or
standard mode with more attempts. What still fails after that surfaces as
:class:`~analytics.domain.errors.StorageUnavailable` (the actor retries, then dead-letters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from analytics.domain.errors import AdapterError

if TYPE_CHECKING:
    from analytics.settings import Settings


class ResourceMissing(AdapterError):
    """A table or topic this service needs does not exist: run ``analytics init``."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(
            f"{kind} {name!r} does not exist; create it with `analytics init` "
            "(same settings: region, endpoint URL, table names, topic ARN)"
        )


def botocore_config(settings: Settings) -> Config:
    return Config(
        region_name=settings.aws_region,
        retries={"mode": settings.aws_retry_mode, "total_max_attempts": settings.aws_max_attempts},
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
        # An aggregation reads up to 8 partitions at once (DynamoDBAggregateStore).
        max_pool_connections=max(32, settings.worker_threads * 2, settings.web_threads * 2),
        tcp_keepalive=True,
    )


def dynamodb_client(settings: Settings) -> Any:
    """A low-level DynamoDB client (thread-safe; one per process)."""
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=settings.dynamodb_endpoint_url or settings.aws_endpoint_url,
        config=botocore_config(settings),
    )


def sns_client(settings: Settings) -> Any:
    return boto3.session.Session().client(
        "sns", endpoint_url=settings.aws_endpoint_url, config=botocore_config(settings)
    )


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, '' for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
