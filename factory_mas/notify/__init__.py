"""SMS to the supervisor for CRITICAL and EMERGENCY decisions, through a durable outbox."""

from .outbox import STATUSES, OutboxMessage, queue_decision
from .service import Notifier
from .sms import SendError, TwilioSender, redact

__all__ = [
    "STATUSES",
    "Notifier",
    "OutboxMessage",
    "SendError",
    "TwilioSender",
    "queue_decision",
    "redact",
]
