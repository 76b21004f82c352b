"""The checks of a webhook's settings that need nothing but the standard library: the networks allowed despite the
SSRF guard, and a Standard Webhooks secret. The job routes (jobs/webhooks.py, with the sender) and the config
(settings.JobsOptions) check with the same functions.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Iterable

from .errors import InvalidInput

_SECRET_PREFIX = "whsec_"


def parse_allow(cidrs: Iterable[str], what: str = "webhook allow list") -> tuple[ipaddress._BaseNetwork, ...]:
    """CIDRs (or single addresses) allowed despite being private/loopback/link-local; ValueError naming a bad one
    (and ``what`` it is in)."""
    if isinstance(cidrs, str):
        cidrs = [cidrs]
    nets = []
    for c in cidrs:
        if isinstance(c, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            nets.append(c)
            continue
        try:
            nets.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{what}: {c!r} is not an IP network (CIDR) or address") from None
    return tuple(nets)


def check_secret(secret: str, param: str = "webhook_secret") -> str:
    """A Standard Webhooks secret (``whsec_`` + base64 of 24..64 bytes); InvalidInput otherwise. Returns it."""
    def bad(why: str):
        return InvalidInput(f"{param} {why}", param=param, code="invalid_webhook_secret")

    if not isinstance(secret, str) or not secret.startswith(_SECRET_PREFIX):
        raise bad(f"must start with {_SECRET_PREFIX!r} followed by base64")
    b64 = secret[len(_SECRET_PREFIX):]
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"must be {_SECRET_PREFIX!r} followed by standard base64") from None
    if not 24 <= len(key) <= 64:
        raise bad(f"must encode 24 to 64 bytes, not {len(key)}")
    return secret
