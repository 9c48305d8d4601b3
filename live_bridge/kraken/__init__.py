"""The Kraken adapter: python-kraken-sdk wrapped for a daemon that must not lose money to its
exchange client. See :mod:`live_bridge.kraken.adapter` and docs/LIVE.md ("Kraken adapter").

* :mod:`.outcome`  every answer classified DONE / REJECTED (definitive) / UNKNOWN; halts.
* :mod:`.nonce`    one persisted, locked, monotonic nonce counter per key.
* :mod:`.budget`   client-side REST and per-pair trading rate counters (waits, never exceeds).
* :mod:`.rules`    AssetPairs rules and market status applied with Decimal before sending.
* :mod:`.records`  typed balances (BalanceEx), orders, fills.
"""

from .adapter import (
    CL_ORD_ID_RE,
    KRAKEN_URL,
    Credentials,
    CredentialsError,
    KrakenAdapter,
    SdkClients,
    normalize_cl_ord_id,
    same_cl_ord_id,
)
from .budget import TIERS, RateBudget, RateBudgetExceeded, RateTier, cancel_penalty, rest_cost
from .nonce import NonceCounter, key_fingerprint
from .outcome import (
    ERROR_TABLE,
    CallResult,
    Halt,
    KrakenHalt,
    Outcome,
    classify_envelope,
    classify_exception,
    classify_http,
    rule_for,
)
from .records import AssetBalance, Balances, Fill, OrderAck, OrderInfo, parse_balance_ex
from .rules import (
    MalformedResult,
    OrderRefused,
    PairRules,
    check_order,
    parse_asset_pairs,
    round_price,
    round_volume,
    status_gate,
)

__all__ = [
    "CL_ORD_ID_RE",
    "ERROR_TABLE",
    "KRAKEN_URL",
    "TIERS",
    "AssetBalance",
    "Balances",
    "CallResult",
    "Credentials",
    "CredentialsError",
    "Fill",
    "Halt",
    "KrakenAdapter",
    "KrakenHalt",
    "MalformedResult",
    "NonceCounter",
    "OrderAck",
    "OrderInfo",
    "OrderRefused",
    "Outcome",
    "PairRules",
    "RateBudget",
    "RateBudgetExceeded",
    "RateTier",
    "SdkClients",
    "cancel_penalty",
    "check_order",
    "classify_envelope",
    "classify_exception",
    "classify_http",
    "key_fingerprint",
    "normalize_cl_ord_id",
    "parse_asset_pairs",
    "parse_balance_ex",
    "rest_cost",
    "round_price",
    "round_volume",
    "rule_for",
    "same_cl_ord_id",
    "status_gate",
]
