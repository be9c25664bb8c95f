"""How every factory_mas MQTT client reaches the broker: address, credentials, TLS, v5."""

from __future__ import annotations

import ssl
from typing import Any

from ..errors import SettingsError
from ..settings import MqttSettings


def tls_context(s: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context the settings ask for; SettingsError names a file that will not do."""
    if not s.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=s.tls_ca_file or None)
        if s.tls_cert_file:
            context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"mqtt TLS files: {exc}") from exc
    if s.tls_insecure:
        context.check_hostname = False
    return context


def client_options(s: MqttSettings, context: ssl.SSLContext | None) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments shared by the bridge and the replay publisher."""
    # Here rather than at the top: the bridge imports this module even without a broker.
    import aiomqtt

    return {
        "hostname": s.broker,
        "port": s.port,
        "username": s.username or None,
        "password": s.password or None,
        "protocol": aiomqtt.ProtocolVersion.V5,
        "keepalive": s.keepalive_s,
        "tls_context": context,
        "tls_insecure": s.tls_insecure if s.tls else None,
        "max_inflight_messages": s.max_inflight_messages,
        "timeout": 10,
    }
