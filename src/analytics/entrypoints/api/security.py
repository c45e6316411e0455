"""API keys, scopes, rate limits and CORS at the HTTP boundary.

Who may call what is one table, :data:`POLICY`, matched against the route template the
router chose. A route no rule names needs ``admin`` (fail closed), and a test checks that
every route of the app is named by a rule, so a new route cannot slip through unnoticed.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import falcon
import structlog

from analytics.application.api_keys import authenticate, authorize
from analytics.application.overload import check_backlog
from analytics.domain.auth import ApiKey, Scope
from analytics.domain.errors import BatchOverBurst, RateLimited, Unauthenticated
from analytics.domain.ports import ApiKeyStore, Backlog, RateLimiter
from analytics.domain.ratelimit import Quota, RateDecision
from analytics.settings import Settings

Access = Scope | Literal["open", "metrics"]

#: WSGI environ key (no client header can make one: theirs are ``HTTP_*``) by which the
#: ingest lane hands Falcon a request it authenticated and charged, then found invalid
#: or the service overloaded: ``(key or None, rate decision or None)``.
ADMITTED = "analytics.admitted"


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]  # empty: every method
    template: re.Pattern[str]
    access: Access

    def matches(self, method: str, template: str) -> bool:
        return (not self.methods or method in self.methods) and bool(self.template.match(template))


def _rule(methods: str, pattern: str, access: Access) -> Rule:
    return Rule(frozenset(methods.split()) if methods else frozenset(), re.compile(pattern), access)


# First match wins. Ingest routes count events, not requests (see POST batch).
POLICY: tuple[Rule, ...] = (
    _rule("GET HEAD", r"^/health$", "open"),
    _rule("GET HEAD", r"^/health/detailed$", "read"),
    _rule("GET HEAD", r"^/metrics$", "metrics"),
    _rule("GET HEAD", r"^/api/v1/openapi\.json$", "open"),
    _rule("GET HEAD", r"^/docs(/.*)?$", "open"),
    _rule("POST", r"^/api/v1/analytics/events(/batch)?$", "ingest"),
    _rule("POST", r"^/analytics/events$", "ingest"),
    _rule("POST", r"^/api/v1/analytics/aggregations/\{[^}]+\}/generate$", "admin"),
    _rule("", r"^/api/v1/admin(/.*)?$", "admin"),
    _rule("GET HEAD", r"^/api/v1/analytics/", "read"),
)
DEFAULT_ACCESS: Access = "admin"
EXEMPT_FROM_ANON_LIMIT = re.compile(r"^/(health|metrics)(/|$)")


@functools.lru_cache(maxsize=4096)
def access_for(method: str, template: str) -> tuple[Access, bool]:
    """The access a route needs, and whether a rule named it (False: the default)."""
    for rule in POLICY:
        if rule.matches(method, template):
            return rule.access, True
    return DEFAULT_ACCESS, False


def presented_key(req: falcon.Request) -> str | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    return token_from(req.get_header("Authorization"), req.get_header("X-API-Key"))


def token_from(authorization: str | None, api_key: str | None) -> str | None:
    """The key from the two headers' values (``Authorization`` first)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return "malformed:" + authorization  # not Bearer: never a key, even a valid one
    return api_key


def client_address(req: falcon.Request, trust_forwarded: bool) -> str:
    """The peer, or behind a trusted proxy (``ANALYTICS_TRUST_FORWARDED_FOR``) the last
    ``X-Forwarded-For`` entry: the one that proxy appended for whoever connected to it.
    Entries before it, and a ``Forwarded`` header, are whatever the client sent (the
    first entry made every request a new bucket: the anonymous limit never bit)."""
    if trust_forwarded:
        forwarded = req.get_header("X-Forwarded-For")
        last = _address(forwarded.rsplit(",", 1)[-1]) if forwarded else None
        if last:
            return last
    return str(req.remote_addr or "unknown")


def _address(entry: str) -> str | None:
    """An ``X-Forwarded-For`` entry as an IP address (a port some proxies add dropped),
    or None: any other text chose a bucket of its own, a new one per request (QA)."""
    entry = entry.strip()
    host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry  # v4:port
    host = host.removeprefix("[").split("]")[0]  # [v6] or [v6]:port
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def address_bucket(address: str) -> str:
    """The rate-limit bucket of a client address: an IPv4 address itself (also written as
    IPv4-mapped IPv6, ``::ffff:a.b.c.d``), an IPv6 address its /64, the smallest prefix a
    subscriber gets and whose addresses a host picks freely (a bucket per IPv6 address let
    one client spend 2^64 buckets; the mapped form doubled an IPv4 client's: security
    review). Anything else (``unknown``) as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthMiddleware:
    """401/403 by :data:`POLICY`, then a rate-limit charge; 503 for ingest under overload."""

    def __init__(
        self,
        settings: Settings,
        store: ApiKeyStore | None,
        limiter: RateLimiter | None,
        backlog: Backlog | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.backlog = backlog
        self.enabled = settings.auth == "required" and store is not None
        self.key_quota = Quota(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.anon_quota = Quota(settings.anon_rate_limit_per_minute, settings.anon_rate_limit_burst)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.max_decompressed_bytes = self.settings.max_decompressed_bytes
        req.context.api_key = None
        req.context.rate_bucket = None
        req.context.rate_limiter = self.limiter

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        params: dict[str, object],
    ) -> None:
        if req.method == "OPTIONS" or resource is None:
            return
        access, _ = access_for(req.method, req.uri_template or req.path)
        if access == "metrics":
            access = "read" if self.settings.metrics_auth == "required" else "open"
        admitted = req.env.get(ADMITTED) if access == "ingest" else None
        if admitted is not None:  # the ingest lane authenticated and charged it already
            key, req.context.rate_decision = admitted
            if key is not None:
                req.context.api_key = key
                structlog.contextvars.bind_contextvars(api_key_id=key.key_id)
            self._check_backlog()
            return
        token = presented_key(req)
        if access == "open" and EXEMPT_FROM_ANON_LIMIT.match(req.path):
            token = None  # a probe's key is ignored: a stale one made /health answer 429
        key: ApiKey | None = None
        if self.enabled and (access != "open" or token):
            try:
                key = authenticate(token, store=self.store)  # type: ignore[arg-type]
            except Unauthenticated:
                self._charge_anonymous(req, resp)  # guessing keys costs the guesser
                if access != "open":
                    raise
        if key is not None:
            req.context.api_key = key
            structlog.contextvars.bind_contextvars(api_key_id=key.key_id)  # who, in every log line
        req.context.rate_bucket = self.rate_bucket(
            key, lambda: client_address(req, self.settings.trust_forwarded_for), req.path
        )
        if self.enabled and access != "open":
            assert key is not None
            authorize(key, access)  # type: ignore[arg-type]
        spend(req, resp, 1)
        if access == "ingest":
            self._check_backlog()

    def _check_backlog(self) -> None:
        if self.backlog is not None:
            check_backlog(
                self.backlog,
                threshold=self.settings.overload_queue_depth,
                max_retry_s=self.settings.overload_retry_after_max_s,
            )

    def rate_bucket(
        self, key: ApiKey | None, address: Callable[[], str], path: str
    ) -> tuple[str, Quota] | None:
        """The bucket a request is charged to: its key's, else its address's (keys off),
        else the anonymous one (keys on, no valid key); None when nothing is charged.
        ``address`` is called only when needed (behind a proxy it parses headers)."""
        if self.limiter is None:
            return None  # rate limits off: no bucket, so no client address to work out
        if key is not None:
            return ("key:" + key.key_id, self.quota_of(key))
        if not self.enabled:
            return ("addr:" + address_bucket(address()), self.key_quota)
        if not EXEMPT_FROM_ANON_LIMIT.match(path):
            return ("anon:" + address_bucket(address()), self.anon_quota)
        return None

    def quota_of(self, key: ApiKey) -> Quota:
        rate = key.rate_per_minute or self.key_quota.rate_per_minute
        return Quota(rate, key.burst or self.key_quota.burst)

    def _charge_anonymous(self, req: falcon.Request, resp: falcon.Response) -> None:
        addr = address_bucket(client_address(req, self.settings.trust_forwarded_for))
        req.context.rate_bucket = ("anon:" + addr, self.anon_quota)
        spend(req, resp, 1)
        req.context.rate_bucket = None

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        last: RateDecision | None = getattr(req.context, "rate_decision", None)
        for name, value in rate_headers(last, has_retry_after=bool(resp.get_header("Retry-After"))):
            resp.set_header(name, value)


def rate_headers(decision: RateDecision | None, *, has_retry_after: bool) -> list[tuple[str, str]]:
    """The ``RateLimit-*`` headers of the request's last charge (none when unlimited); its
    ``Retry-After`` only when the answer has none of its own (a 503 says how long)."""
    if decision is None or not decision.limit:
        return []
    return [
        (name, value)
        for name, value in decision.headers().items()
        if name != "Retry-After" or not has_retry_after
    ]


def spend(req: falcon.Request, resp: falcon.Response, cost: int, *, total: int | None = None) -> None:
    """Charge ``cost`` units (requests, or events on ingest) to this request's bucket; 429.
    ``total``: what the whole request costs (a batch: its events), when part of it was
    charged before; more than the bucket's burst is refused at once (413)."""
    limiter: RateLimiter | None = getattr(req.context, "rate_limiter", None)
    bucket = getattr(req.context, "rate_bucket", None)
    if limiter is None or bucket is None or cost <= 0:
        return
    name, quota = bucket
    if (total or cost) > quota.burst:  # no wait would ever make room: not 429 forever
        raise BatchOverBurst(total or cost, quota.burst)
    decision = limiter.hit(name, cost, quota)
    req.context.rate_decision = decision
    if not decision.allowed:
        raise RateLimited(
            f"rate limit exceeded: {cost} unit(s) asked, {decision.remaining} left; "
            f"retry in {decision.retry_after_s}s",
            retry_after=decision.retry_after_s,
            headers=decision.headers(),
        )


class CORSMiddleware:
    """CORS for configured origins, with ``Vary: Origin`` and preflight answered here.

    Falcon's own CORSMiddleware does not add ``Vary: Origin``, so a shared cache could
    serve one origin's answer to another; this one always adds it.
    """

    ALLOW_HEADERS = "Authorization, X-API-Key, Content-Type, Content-Encoding, X-Correlation-ID"
    EXPOSE_HEADERS = (
        "X-Correlation-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
        "RateLimit-Policy, Deprecation, Link"
    )
    ALLOW_METHODS = "GET, POST, OPTIONS"

    def __init__(self, origins: tuple[str, ...], max_age_s: int = 600) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)
        self.max_age = str(max_age_s)

    def allowed(self, origin: str | None) -> bool:
        return bool(origin) and (self.any or origin in self.origins)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("Origin")
        if req.method == "OPTIONS" and origin and req.get_header("Access-Control-Request-Method"):
            resp.status = falcon.HTTP_204
            resp.complete = True  # a preflight never needs a key and never reaches a resource
            if self.allowed(origin):
                resp.set_header("Access-Control-Allow-Methods", self.ALLOW_METHODS)
                resp.set_header("Access-Control-Allow-Headers", self.ALLOW_HEADERS)
                resp.set_header("Access-Control-Max-Age", self.max_age)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        resp.append_header("Vary", "Origin")
        origin = req.get_header("Origin")
        if self.allowed(origin):
            resp.set_header("Access-Control-Allow-Origin", "*" if self.any else origin)
            resp.set_header("Access-Control-Expose-Headers", self.EXPOSE_HEADERS)
