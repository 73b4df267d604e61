"""Who the client is: the socket peer, or, behind trusted proxies, the right-most
X-Forwarded-For hop that is not one of them (the hops left of it are whatever the client
chose to send).

One setting decides (`BERTH_HTTP__TRUSTED_PROXIES`, IPs or CIDRs, empty by default): for the
access log, the rate limiter and everything else that reads the request's client, and for the
scheme (X-Forwarded-Proto, which makes HSTS apply behind a TLS-terminating proxy). The server
itself is told to trust nobody (`serve` runs uvicorn with proxy_headers off): with its default
of trusting 127.0.0.1, a pod behind a sidecar let every client pick its own address.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.config import ConfigError, HttpSettings, env_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES = frozenset({"http", "https"})


class TrustedProxies:
    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks

    @classmethod
    def of(cls, settings: HttpSettings) -> TrustedProxies:
        """The configured proxies; ConfigError naming the variable for an entry that is not
        an IP address or a CIDR (a silently ignored typo would trust nobody, or everybody)."""
        networks = []
        for entry in settings.trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                setting = env_name("http", "trusted_proxies")
                raise ConfigError(f"{setting}: {entry!r} is not an IP address or CIDR") from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_of(self, peer: str, forwarded_for: list[bytes]) -> str:
        """The client behind `peer`, from its X-Forwarded-For header values in order."""
        if not self.trusts(peer):
            return peer
        hops = [
            hop.strip()
            for value in forwarded_for
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        addresses = [_parsed(hop) for hop in hops]
        for address in reversed(addresses):
            if address is None:
                return peer  # a malformed chain is not evidence of anything
            if not self.trusts(address):
                return address
        # Every hop is one of ours (or there is none): the left-most is the closest we know.
        return addresses[0] or peer if addresses else peer


def _parsed(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class ForwardedHeadersMiddleware:
    """Pure ASGI, outermost: puts the client and scheme a trusted proxy reports in the scope.
    Added only when proxies are configured; otherwise the scope is the socket's."""

    def __init__(self, app: ASGIApp, *, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.proxies.trusts(client[0]):
            forwarded_for: list[bytes] = []
            proto: bytes | None = None
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value
            scope["client"] = (self.proxies.client_of(client[0], forwarded_for), 0)
            scheme = proto.decode("latin-1").strip().lower() if proto else ""
            if scheme in _SCHEMES and scope["type"] == "http":
                scope["scheme"] = scheme
        await self.app(scope, receive, send)
