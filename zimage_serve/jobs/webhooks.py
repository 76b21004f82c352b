"""Job webhooks: when an async job ends, its final record is POSTed once to the user's ``webhook_url``.

Contract:
- Each message is signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature:
  v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``) with the job's ``whsec_...`` secret; a receiver
  checks it with ``standardwebhooks.Webhook(secret).verify(body, headers)``.
- SSRF guard: at submission ``check_url`` checks the syntax and refuses literal private/loopback/link-local/...
  addresses (and ``localhost`` names); before every attempt ``resolve_allowed`` resolves the host again (DNS may
  change) and refuses if any address is in such a range. ``allow`` (operator configuration, ``parse_allow``) lists
  the networks let through anyway, e.g. a receiver on the cluster's own network.
- ``WebhookSender.deliver`` retries a non-2xx answer or a network failure with exponential backoff, never follows
  redirects, and never raises: the outcome is a ``Delivery`` (stored on the job record). The secret is never logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
from standardwebhooks.webhooks import Webhook

from ..core.errors import InvalidInput
from ..core.webhook_checks import check_secret, parse_allow  # noqa: F401 (this module's API too)

log = logging.getLogger("zimage_serve")

DEFAULT_ATTEMPTS = 5
MAX_URL_LENGTH = 2048
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible IPv6; Python calls it global


class WebhookRefused(InvalidInput):
    """The webhook URL points at an address this service refuses to call (an SSRF guard)."""

    def __init__(self, message: str, param: str | None = "webhook_url", code: str = "webhook_url_refused"):
        super().__init__(message, param, code)


def _refused(ip: ipaddress._BaseAddress) -> bool:
    """Whether an address is in a range no webhook may reach (private, loopback, link-local, multicast, ...)."""
    inner = [ip]
    if ip.version == 6:
        inner += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        if ip in _IPV4_COMPATIBLE:
            return True
    return any(not a.is_global or a.is_private or a.is_loopback or a.is_link_local or a.is_multicast
               or a.is_reserved or a.is_unspecified for a in inner)


def _allowed(ip: ipaddress._BaseAddress, nets) -> bool:
    cands = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped is not None else [])
    return any(a.version == n.version and a in n for a in cands for n in nets)


def _literal(host: str) -> ipaddress._BaseAddress | None:
    """The host as an IP address: standard forms, and the numeric IPv4 forms resolvers accept (``127.1``, ``0x7f.1``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def check_url(url: str, allow=(), param: str = "webhook_url") -> str:
    """Syntax only, no DNS: an http(s) URL with a host, at most 2048 chars, no credentials, no fragment
    (code ``invalid_webhook_url``); a literal IP in a refused range or a ``localhost`` name, unless within
    ``allow``, is refused (``WebhookRefused``, code ``webhook_url_refused``). Returns the URL."""
    def bad(why: str):
        return InvalidInput(f"{param} {why}", param=param, code="invalid_webhook_url")

    if not isinstance(url, str) or not url:
        raise bad("must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise bad("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError for a bad port
    except ValueError as e:
        raise bad(f"is not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad(f"must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not host:
        raise bad("has no host")
    if "@" in parts.netloc:
        raise bad("must not contain a user name or password")
    if "#" in url:
        raise bad("must not contain a fragment (#...)")
    nets = parse_allow(allow)
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        if not _allowed(ipaddress.ip_address("127.0.0.1"), nets):
            raise WebhookRefused(f"{param} host {host!r} is the local machine", param=param)
    ip = _literal(host)
    if ip is not None and _refused(ip) and not _allowed(ip, nets):
        raise WebhookRefused(f"{param} host {host} is a private, loopback, link-local or reserved address",
                             param=param)
    return url


async def resolve_allowed(url: str, allow=()) -> list[str]:
    """Resolve the URL's host now and return its addresses; WebhookRefused if any is in a refused range and not in
    ``allow`` (InvalidInput for a malformed URL, OSError when the name does not resolve)."""
    nets = parse_allow(allow)
    check_url(url, nets)
    parts = urlsplit(url)
    ip = _literal(parts.hostname)
    if ip is not None:
        addrs = [str(ip)]
    else:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addrs:
            raise OSError(f"{parts.hostname} resolves to no address")
    for a in addrs:
        addr = ipaddress.ip_address(a)
        if _refused(addr) and not _allowed(addr, nets):
            raise WebhookRefused(f"webhook_url host {parts.hostname} resolves to {a}, a private, loopback, "
                                 "link-local or reserved address")
    return addrs


def signed_headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers (id, timestamp, v1 signature) and the JSON content type for ``body``."""
    ts = int(time.time() if now is None else now)
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, timezone.utc), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
            "content-type": "application/json"}


@dataclass
class Delivery:
    """The outcome of one webhook delivery (all its attempts)."""

    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status, None if no response
    error: str | None  # the last failure in words, None when delivered


def _origin(url: str) -> str:
    """What logs name: scheme://host[:port], no path or query (they may carry tokens)."""
    try:
        p = urlsplit(url)
        return f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "")
    except ValueError:
        return "<invalid url>"


class _Pinned(aiohttp.abc.AbstractResolver):
    """A resolver that answers with the addresses checked already (resolve_allowed), whatever the name."""

    def __init__(self, addresses: list[str]):
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in self.addresses]

    async def close(self) -> None:
        pass


class WebhookSender:
    """POSTs signed job records, with retries; one sender serves many deliveries (it holds no connections)."""

    def __init__(self, allow=(), max_attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = 1.0,
                 timeout_s: float = 10.0, max_backoff_s: float = 60.0):
        self.allow = parse_allow(allow)
        self.max_attempts, self.backoff_s = max(1, int(max_attempts)), backoff_s
        self.timeout_s, self.max_backoff_s = timeout_s, max_backoff_s

    async def deliver(self, url: str, secret: str, msg_id: str, payload: dict) -> Delivery:
        """POST ``payload`` as JSON to ``url``, signed (one webhook-id, a fresh timestamp and signature per
        attempt), re-checking the address before each attempt (a refusal is final). 2xx delivers; anything else
        retries after ``backoff_s * 2**(attempt-1)`` (at most ``max_backoff_s``), ``max_attempts`` in all.
        Redirects are not followed. Never raises (but for cancellation): failures are in the Delivery."""
        where = _origin(url)
        try:
            check_secret(secret)
            body = json.dumps(payload).encode()
        except (InvalidInput, TypeError, ValueError) as e:
            return self._final(msg_id, where, Delivery(False, 0, None, f"not sent: {e}"))
        status: int | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 2), self.max_backoff_s))
            status = None
            try:
                addresses = await resolve_allowed(url, self.allow)
            except InvalidInput as e:  # WebhookRefused or a malformed URL: trying again won't help
                log.warning("webhook %s attempt %d/%d to %s refused: %s", msg_id, attempt, self.max_attempts,
                            where, e)
                return self._final(msg_id, where, Delivery(False, attempt, None, str(e)))
            except Exception as e:
                error = f"cannot resolve the host: {e}"
            else:
                # the connection goes to the addresses just checked, never to a second lookup's (DNS rebinding)
                connector = aiohttp.TCPConnector(resolver=_Pinned(addresses), use_dns_cache=False)
                try:
                    async with aiohttp.ClientSession(connector=connector,
                                                     timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
                        async with session.post(url, data=body, headers=signed_headers(secret, msg_id, body),
                                                allow_redirects=False) as resp:
                            status = resp.status
                    if 200 <= status < 300:
                        return self._final(msg_id, where, Delivery(True, attempt, status, None))
                    error = f"the receiver answered HTTP {status}"
                except asyncio.TimeoutError:
                    error = f"no answer within {self.timeout_s:g} s"
                except Exception as e:
                    error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.warning("webhook %s attempt %d/%d to %s failed: %s", msg_id, attempt, self.max_attempts,
                        where, error)
        return self._final(msg_id, where, Delivery(False, self.max_attempts, status, error))

    @staticmethod
    def _final(msg_id: str, where: str, d: Delivery) -> Delivery:
        if d.delivered:
            log.info("webhook %s delivered to %s (HTTP %s, %d attempt(s))", msg_id, where, d.status, d.attempts)
        else:
            log.info("webhook %s not delivered to %s after %d attempt(s): %s", msg_id, where, d.attempts, d.error)
        return d
