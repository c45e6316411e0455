"""SNS notifier: one message per event, with attributes that filter policies can match.

``PublishBatch`` sends up to 10 entries per call; entries the service reports as failed
are retried with capped exponential backoff, and if some still fail the whole call raises
:class:`NotificationFailed` so the ``notifications`` actor retries (then dead-letters).
Delivery is therefore at least once: subscribers dedupe on the ``event_id`` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analytics.adapters import codec
from analytics.adapters.aws import ResourceMissing, error_code
from analytics.adapters.dynamodb_events import Backoff
from analytics.domain.errors import NotificationFailed
from analytics.domain.events import Event

PUBLISH_BATCH_MAX = 10  # SNS's limit per PublishBatch


def message_attributes(event: Event) -> dict[str, dict[str, str]]:
    """Attributes for subscription filter policies (values must be non-empty)."""
    attrs = {
        "event_type": {"DataType": "String", "StringValue": event.event_type},
        "event_id": {"DataType": "String", "StringValue": str(event.event_id)},
        "user_id": {"DataType": "String", "StringValue": event.user_id},
        "event_day": {"DataType": "String", "StringValue": event.event_day},
    }
    if event.correlation_id:
        attrs["correlation_id"] = {"DataType": "String", "StringValue": event.correlation_id}
    if event.session_id:
        attrs["session_id"] = {"DataType": "String", "StringValue": event.session_id}
    if event.product_id:
        attrs["product_id"] = {"DataType": "String", "StringValue": event.product_id}
    if event.currency:
        attrs["currency"] = {"DataType": "String", "StringValue": event.currency}
    if event.total_value is not None:
        attrs["total_value"] = {"DataType": "Number", "StringValue": str(event.total_value)}
    return attrs


class SnsNotifier:
    """Notifier port on one SNS topic."""

    def __init__(self, client: Any, topic_arn: str, *, backoff: Backoff | None = None) -> None:
        self.client = client
        self.topic_arn = topic_arn
        self.backoff = backoff or Backoff(max_attempts=5)

    def publish(self, events: Sequence[Event]) -> None:
        for start in range(0, len(events), PUBLISH_BATCH_MAX):
            chunk = events[start : start + PUBLISH_BATCH_MAX]
            pending = {
                str(n): {
                    "Id": str(n),
                    "Message": codec.encode(e).decode(),
                    "MessageAttributes": message_attributes(e),
                }
                for n, e in enumerate(chunk)
            }
            attempt = 0
            while pending:
                try:
                    response = self.client.publish_batch(
                        TopicArn=self.topic_arn, PublishBatchRequestEntries=list(pending.values())
                    )
                except Exception as exc:
                    code = error_code(exc)
                    if code in ("NotFound", "NotFoundException"):
                        raise ResourceMissing("SNS topic", self.topic_arn) from exc
                    raise NotificationFailed(f"sns publish: {code or exc}") from exc
                failed = response.get("Failed") or []
                pending = {f["Id"]: pending[f["Id"]] for f in failed if f["Id"] in pending}
                if pending:
                    attempt += 1
                    if attempt >= self.backoff.max_attempts:
                        codes = sorted({f.get("Code", "?") for f in failed})
                        raise NotificationFailed(
                            f"sns: {len(pending)} messages not taken after {attempt} tries: {codes}"
                        )
                    self.backoff.sleep(self.backoff.delay(attempt))
