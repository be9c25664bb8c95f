"""API keys with roles (viewer < operator < admin), checked by one ASGI middleware.

Keys are stored hashed (`keys`), each route needs a role (`roles`), the middleware checks
HTTP and WebSocket requests alike (`middleware`), and `routes` serves the audit trail.
"""

from .keys import ROLES, Principal, actor
from .middleware import AuthMiddleware, ensure_first_key
from .roles import role_for

__all__ = ["ROLES", "AuthMiddleware", "Principal", "actor", "ensure_first_key", "role_for"]
