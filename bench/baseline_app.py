"""The ceiling: a bare Falcon JSON endpoint under the same gunicorn settings as the service.

It decodes the body with msgspec and answers 202 with a small JSON document: everything an
ingest endpoint must do at the least, and nothing more (no validation, no broker).
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


def create() -> falcon.App:
    app = falcon.App()
    app.add_route("/ingest", Echo())
    return app


class BaselineServer(GunicornServer):
    def load(self) -> falcon.App:
        return create()


if __name__ == "__main__":
    settings = Settings.from_env({"ANALYTICS_PORT": sys.argv[1], **dict(a.split("=", 1) for a in sys.argv[2:])})
    BaselineServer(settings).run()
