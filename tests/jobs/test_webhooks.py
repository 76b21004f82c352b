"""Job webhooks against a real HTTP receiver on 127.0.0.1: signatures, retries, redirects, the SSRF guard."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os

import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from zimage_serve.core.errors import InvalidInput
from zimage_serve.jobs.webhooks import (DEFAULT_ATTEMPTS, Delivery, WebhookRefused, WebhookSender, check_secret,
                                        check_url, parse_allow, resolve_allowed, signed_headers)

LOOPBACK = ("127.0.0.0/8",)
PAYLOAD = {"id": "job_" + "0" * 32, "status": "succeeded", "images": [{"url": "/v1/jobs/x/images/0"}]}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Receiver:
    """Records each POST's path, headers and raw body; answers ``fail_status`` to the first ``fail_first`` ones."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500, redirect: bool = False):
        self.fail_first, self.fail_status, self.redirect = fail_first, fail_status, redirect
        self.requests: list[tuple[str, dict, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        if self.redirect:
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.fail_status, text="not now")
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def serving(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"http://127.0.0.1:{port}/hook"
        finally:
            await runner.cleanup()


def deliver(receiver: Receiver, secret: str, msg_id: str = "msg_1", url: str | None = None, **kw) -> Delivery:
    kw.setdefault("allow", LOOPBACK)
    kw.setdefault("backoff_s", 0.01)

    async def go():
        async with receiver.serving() as hook:
            return await WebhookSender(**kw).deliver(url or hook, secret, msg_id, PAYLOAD)

    return asyncio.run(go())


def test_delivered_once_and_signed():
    secret, rx = new_secret(), Receiver()
    d = deliver(rx, secret, msg_id="job_abc")
    assert d == Delivery(delivered=True, attempts=1, status=204, error=None)
    assert dataclasses.asdict(d) == {"delivered": True, "attempts": 1, "status": 204, "error": None}
    [(path, headers, body)] = rx.requests
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "job_abc"
    assert Webhook(secret).verify(body, headers) == PAYLOAD
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the body as signed, byte for byte
        Webhook(secret).verify(body + b" ", headers)


def test_retries_until_delivered_with_the_same_id():
    secret, rx = new_secret(), Receiver(fail_first=2)
    d = deliver(rx, secret, msg_id="job_retry")
    assert (d.delivered, d.attempts, d.status, d.error) == (True, 3, 204, None)
    assert [h["webhook-id"] for _, h, _ in rx.requests] == ["job_retry"] * 3
    for _, headers, body in rx.requests:  # each attempt signed on its own
        Webhook(secret).verify(body, headers)


def test_gives_up_after_max_attempts():
    rx = Receiver(fail_first=10**6)
    d = deliver(rx, new_secret(), max_attempts=2)
    assert (d.delivered, d.attempts, d.status) == (False, 2, 500)
    assert "500" in d.error and len(rx.requests) == 2


def test_redirect_is_not_followed():
    rx = Receiver(redirect=True)
    d = deliver(rx, new_secret(), max_attempts=2)
    assert (d.delivered, d.attempts, d.status) == (False, 2, 302)
    assert [p for p, _, _ in rx.requests] == ["/hook", "/hook"]  # never /elsewhere


def test_network_error_is_retried_then_reported():
    async def go():
        async with Receiver().serving() as hook:  # a port that was just free and is closed now
            pass
        return await WebhookSender(allow=LOOPBACK, max_attempts=2, backoff_s=0.01).deliver(
            hook, new_secret(), "m", PAYLOAD)

    d = asyncio.run(go())
    assert (d.delivered, d.attempts, d.status) == (False, 2, None) and d.error


def test_refused_address_is_never_sent(caplog):
    secret, rx = new_secret(), Receiver()
    with caplog.at_level("INFO", logger="zimage_serve"):
        d = deliver(rx, secret, allow=())  # the receiver's 127.0.0.1 is not allowed now
    assert rx.requests == []
    assert not d.delivered and d.status is None and "127.0.0.1" in d.error and "loopback" in d.error
    assert "not delivered" in caplog.text and secret not in caplog.text


def test_bad_secret_is_not_sent():
    rx = Receiver()
    d = deliver(rx, "abc")
    assert rx.requests == [] and not d.delivered and d.attempts == 0 and "webhook_secret" in d.error


@pytest.mark.parametrize("url, code", [
    ("ftp://example.com/hook", "invalid_webhook_url"),
    ("file:///etc/passwd", "invalid_webhook_url"),
    ("http:///nohost", "invalid_webhook_url"),
    ("https://user:pass@example.com/hook", "invalid_webhook_url"),
    ("https://example.com/hook#frag", "invalid_webhook_url"),
    ("https://example.com/" + "a" * 2048, "invalid_webhook_url"),
    ("https://example.com:99999/", "invalid_webhook_url"),
    ("https://exa mple.com/", "invalid_webhook_url"),
    ("http://127.0.0.1", "webhook_url_refused"),
    ("http://10.0.0.1/", "webhook_url_refused"),
    ("http://192.168.1.5:8000/x", "webhook_url_refused"),
    ("http://169.254.169.254/latest", "webhook_url_refused"),
    ("http://[::1]/", "webhook_url_refused"),
    ("http://[::ffff:127.0.0.1]/", "webhook_url_refused"),
    ("http://[fe80::1]/", "webhook_url_refused"),
    ("http://localhost/", "webhook_url_refused"),
    ("http://api.localhost./", "webhook_url_refused"),
    ("http://0.0.0.0/", "webhook_url_refused"),
    ("http://224.0.0.1/", "webhook_url_refused"),
    ("http://127.1/", "webhook_url_refused"),  # resolvers read 127.1 as 127.0.0.1
    ("http://2130706433/", "webhook_url_refused"),
])
def test_check_url_refuses(url, code):
    with pytest.raises(InvalidInput) as e:
        check_url(url)
    assert (e.value.param, e.value.code) == ("webhook_url", code)
    assert isinstance(e.value, WebhookRefused) == (code == "webhook_url_refused")


def test_check_url_accepts():
    assert check_url("https://example.com/hook") == "https://example.com/hook"
    assert check_url("http://93.184.216.34:8080/x?token=1")
    assert check_url("http://127.0.0.1:8080/", allow=LOOPBACK)
    assert check_url("http://[::ffff:127.0.0.1]/", allow=LOOPBACK)
    assert check_url("http://localhost/", allow=LOOPBACK)
    assert check_url("http://10.1.2.3/", allow=parse_allow(["10.0.0.0/8"]))
    with pytest.raises(InvalidInput) as e:
        check_url("ftp://x", param="callback")
    assert e.value.param == "callback"


def test_resolve_allowed_checks_every_address():
    with pytest.raises(WebhookRefused) as e:
        asyncio.run(resolve_allowed("http://localhost:1/"))
    assert e.value.code == "webhook_url_refused" and e.value.param == "webhook_url"
    addrs = asyncio.run(resolve_allowed("http://localhost:1/", allow=("127.0.0.0/8", "::1/128")))
    assert addrs and all(a in ("127.0.0.1", "::1") for a in addrs)
    assert asyncio.run(resolve_allowed("http://127.0.0.1:1/", allow=LOOPBACK)) == ["127.0.0.1"]
    with pytest.raises(WebhookRefused):
        asyncio.run(resolve_allowed("http://10.0.0.1/", allow=LOOPBACK))


def test_parse_allow():
    nets = parse_allow(["10.0.0.0/8", "192.168.1.7", " fd00::/8 "])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert parse_allow(nets) == nets and parse_allow([]) == ()
    with pytest.raises(ValueError, match="not-a-net"):
        parse_allow(["10.0.0.0/8", "not-a-net"])


def test_check_secret():
    s = new_secret()
    assert check_secret(s) == s
    assert check_secret(s.rstrip("="))  # unpadded base64 works too (Webhook() accepts it)
    short = "whsec_" + base64.b64encode(os.urandom(16)).decode()
    long = "whsec_" + base64.b64encode(os.urandom(65)).decode()
    for bad in ("abc", "whsec_!!!", "whsec_", short, long, s[len("whsec_"):]):
        with pytest.raises(InvalidInput) as e:
            check_secret(bad, param="secret")
        assert (e.value.param, e.value.code) == ("secret", "invalid_webhook_secret")
        assert bad[6:] not in str(e.value) or not bad[6:]  # never echoes the secret


def test_signed_headers():
    s, body = new_secret(), b'{"a": 1}'
    h = signed_headers(s, "msg_x", body, now=1_700_000_000.7)
    assert h["webhook-id"] == "msg_x" and h["webhook-timestamp"] == "1700000000"
    assert h["content-type"] == "application/json" and h["webhook-signature"].startswith("v1,")
    assert Webhook(s).verify(body, signed_headers(s, "msg_x", body)) == {"a": 1}
    assert DEFAULT_ATTEMPTS == 5
