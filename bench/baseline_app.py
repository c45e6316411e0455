"""The ceiling: a bare Falcon JSON endpoint under the same gunicorn settings as the service.

``POST /ingest`` decodes the body with msgspec and answers 202 with a small JSON document:
everything an ingest endpoint must do at the least, and nothing more (no validation, no
broker). With batch bodies it is the issue's "decoding alone" reference.

``POST /send`` (only with ``BASELINE_BROKER_URL=redis://...``) is the issue's other batch
reference, "one Dramatiq message per batch": the same decode, then one plain
``actor.send(events)`` on a stock ``RedisBroker`` (dramatiq's own JSON encoder and
middleware), answered 202 with the message id. No worker consumes it.

    python bench/baseline_app.py PORT [BASELINE_BROKER_URL=redis://...] [ANALYTICS_WEB_WORKERS=2 ...]
"""

from __future__ import annotations

import sys
import uuid

import falcon
import msgspec

from analytics.entrypoints.wsgi import GunicornServer
from analytics.settings import Settings

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class Echo:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = _decode(req.bounded_stream.read())
        resp.status = falcon.HTTP_202
        resp.content_type = "application/json"
        resp.data = _encode({"status": "accepted", "event_id": str(uuid.uuid4()), "n": len(doc)})


class PlainSend:
    """Decode, then one plain Dramatiq ``send()`` of the batch's events."""

    def __init__(self, broker_url: str, namespace: str = "bench-plain-send") -> None:
        import dramatiq  # noqa: PLC0415
        from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

        broker = RedisBroker(url=broker_url, namespace=namespace)

        @dramatiq.actor(broker=broker, queue_name="high_priority")
        def store_batch(events: list[dict[str, object]]) -> None:  # never run here
            raise NotImplementedError

        self.actor = store_batch

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = _decode(req.bounded_stream.read())
        events = doc["events"] if isinstance(doc, dict) and "events" in doc else [doc]
        message = self.actor.send(events)
        resp.status = falcon.HTTP_202
        resp.content_type = "application/json"
        resp.data = _encode({"status": "accepted", "message_id": message.message_id,
                             "n": len(events)})  # fmt: skip


def create(broker_url: str | None = None, namespace: str = "bench-plain-send") -> falcon.App:
    app = falcon.App()
    app.add_route("/ingest", Echo())
    if broker_url:
        app.add_route("/send", PlainSend(broker_url, namespace))
    return app


class BaselineServer(GunicornServer):
    def __init__(self, settings: Settings, broker_url: str | None) -> None:
        self.broker_url = broker_url
        super().__init__(settings)

    def load(self) -> falcon.App:
        return create(self.broker_url)


if __name__ == "__main__":
    pairs = dict(a.split("=", 1) for a in sys.argv[2:])
    broker_url = pairs.pop("BASELINE_BROKER_URL", None)
    settings = Settings.from_env({"ANALYTICS_PORT": sys.argv[1], **pairs})
    BaselineServer(settings, broker_url).run()
