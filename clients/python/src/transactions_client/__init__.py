"""A typed client for the transactions service, the product's credit ledger.

    from transactions_client import Client, InsufficientCredits

    with Client("https://transactions.internal", api_key) as ledger:
        hold = ledger.reserve(user_id, 20, "Image generation")
        ...
        ledger.settle(hold.id, "completed")
"""

from . import writes
from ._version import __version__
from .client import MAX_BATCH_ITEMS, Client
from .errors import (
    AuthenticationFailed,
    DuplicateReference,
    ExportTooLarge,
    HoldExpired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidRequest,
    InvalidTransition,
    LedgerRefusal,
    NotFound,
    NotRefundable,
    NotReversible,
    PermissionDenied,
    ProblemError,
    RateLimited,
    RefundExceedsAmount,
    RefundExceedsRemaining,
    ReversalExceedsUsage,
    ServerError,
    ServiceUnavailable,
    ServiceUnreachable,
    TransactionsError,
    UnknownTransaction,
    UnknownUser,
    ValidationFailed,
    problem_class,
)
from .models import Balance, BatchResult, Expiry, Transaction, User
from .writes import Write

__all__ = [
    "AuthenticationFailed", "Balance", "BatchResult", "Client", "DuplicateReference", "Expiry", "ExportTooLarge",
    "HoldExpired", "IdempotencyKeyInUse", "IdempotencyKeyReused", "InsufficientCredits", "InvalidRequest",
    "InvalidTransition", "LedgerRefusal", "MAX_BATCH_ITEMS", "NotFound", "NotRefundable", "NotReversible",
    "PermissionDenied", "ProblemError", "RateLimited", "RefundExceedsAmount", "RefundExceedsRemaining",
    "ReversalExceedsUsage", "ServerError", "ServiceUnavailable", "ServiceUnreachable", "TransactionsError",
    "Transaction", "UnknownTransaction", "UnknownUser", "User", "ValidationFailed", "Write", "problem_class",
    "__version__", "writes",
]
