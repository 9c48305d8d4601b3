"""Asset and pair names: one canonical spelling, every Kraken alias accepted.

Canonical pair names are ``BASE/QUOTE`` in common asset codes (``BTC/USD``, ``DOGE/USDT``); the
venue is recorded separately. Kraken spells BTC as ``XBT`` (asset id ``XXBT``) and DOGE as ``XDG``
(``XXDG``); pair ids like ``XXBTZUSD``, altnames like ``XBTUSD`` and wsnames like ``XBT/USD`` all map
to ``BTC/USD``. Binance symbols (``BTCUSDT``) map to ``BTC/USDT``.

:data:`INSTRUMENTS` holds Kraken's trading rules per pair (price and volume decimals, ordermin,
costmin, tick size) as published by Kraken's AssetPairs endpoint; sizing, the simulator and the
live adapter all read them from here so the three agree. :func:`asset_decimals` is the one table of
the decimals amounts are booked in (quote currency: fee rounding in the backtester and simulator).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from engine.errors import InputError

# Kraken asset id -> common code, for the assets this system knows.
_KRAKEN_ASSET_IDS: dict[str, str] = {
    "XXBT": "BTC",
    "XBT": "BTC",
    "XETH": "ETH",
    "XLTC": "LTC",
    "XXRP": "XRP",
    "XXDG": "DOGE",
    "XDG": "DOGE",
    "ZUSD": "USD",
    "ZEUR": "EUR",
    "ZGBP": "GBP",
}

#: Every asset code this system knows (common spelling).
KNOWN_ASSETS: frozenset[str] = frozenset(
    {
        "BTC",
        "ETH",
        "SOL",
        "XRP",
        "ADA",
        "LTC",
        "DOT",
        "LINK",
        "AVAX",
        "DOGE",
        "USD",
        "USDT",
        "USDC",
        "EUR",
        "GBP",
        "DAI",
    }
)

#: Quote currencies, longest first so ``BTCUSDT`` parses as BTC/USDT, not BTCU/SDT.
QUOTES: tuple[str, ...] = ("USDT", "USDC", "ZUSD", "ZEUR", "ZGBP", "USD", "EUR", "GBP", "DAI")

#: Stablecoins (never traded as a base asset).
STABLECOINS: frozenset[str] = frozenset({"USDT", "USDC", "DAI"})

#: Decimals Kraken books an asset's amounts (balances, costs, fees) in: fiat 4, stablecoins 8,
#: crypto 10 (:func:`asset_decimals`). The simulator quantises every amount with it; the backtester
#: rounds fees to the quote currency's (engine.risk.params.instrument_arrays).
FIAT4: frozenset[str] = frozenset({"USD", "EUR", "GBP"})
STABLE8: frozenset[str] = frozenset({"USDT", "USDC", "DAI"})

# common code -> Kraken asset id (assets listed after 2017 have no X/Z prefix).
_KRAKEN_ASSET_OF: dict[str, str] = {
    "BTC": "XXBT",
    "ETH": "XETH",
    "LTC": "XLTC",
    "XRP": "XXRP",
    "DOGE": "XXDG",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
}
# common code -> the code Kraken uses inside altnames and wsnames.
_KRAKEN_ALT_OF: dict[str, str] = {"BTC": "XBT", "DOGE": "XDG"}


def normalize_asset(code: str) -> str:
    """Map any spelling of an asset (``XXBT``, ``xbt``, ``BTC``) to its common code."""
    c = code.strip().upper()
    c = _KRAKEN_ASSET_IDS.get(c, c)
    if c not in KNOWN_ASSETS:
        raise InputError(f"unknown asset {code!r}")
    return c


def asset_decimals(asset: str) -> int:
    """Decimals of an asset's booked amounts: USD/EUR/GBP 4, USDT/USDC/DAI 8, crypto 10."""
    a = normalize_asset(asset)
    return 4 if a in FIAT4 else 8 if a in STABLE8 else 10


def kraken_asset_id(asset: str) -> str:
    """Kraken's asset id for a common code: ``BTC`` -> ``XXBT``, ``SOL`` -> ``SOL``."""
    a = normalize_asset(asset)
    return _KRAKEN_ASSET_OF.get(a, a)


def kraken_asset_alt(asset: str) -> str:
    """The code Kraken uses in altnames and wsnames: ``BTC`` -> ``XBT``, ``DOGE`` -> ``XDG``."""
    a = normalize_asset(asset)
    return _KRAKEN_ALT_OF.get(a, a)


def split_pair(name: str) -> tuple[str, str]:
    """Parse any pair spelling into (base, quote) common codes. Unknown names raise InputError."""
    raw = name.strip()
    s = raw.upper().replace("-", "/").replace("_", "/")
    if "/" in s:
        parts = s.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise InputError(f"unknown pair {name!r}")
        try:
            return normalize_asset(parts[0]), normalize_asset(parts[1])
        except InputError:
            raise InputError(f"unknown pair {name!r}") from None
    if not re.fullmatch(r"[A-Z0-9]+", s):
        raise InputError(f"unknown pair {name!r}")
    # Kraken legacy pair ids are two 4-letter asset ids: XXBTZUSD, XETHZUSD, XXRPZUSD.
    if len(s) == 8 and s[:4] in _KRAKEN_ASSET_IDS and s[4:] in _KRAKEN_ASSET_IDS:
        return _KRAKEN_ASSET_IDS[s[:4]], _KRAKEN_ASSET_IDS[s[4:]]
    for q in QUOTES:
        if s.endswith(q) and len(s) > len(q):
            try:
                return normalize_asset(s[: -len(q)]), normalize_asset(q)
            except InputError:
                continue
    raise InputError(f"unknown pair {name!r}")


def normalize_pair(name: str) -> str:
    """Canonical ``BASE/QUOTE`` for any spelling: ``XXBTZUSD``, ``XBTUSD``, ``XBT/USD`` -> ``BTC/USD``."""
    base, quote = split_pair(name)
    return f"{base}/{quote}"


@dataclass(frozen=True)
class Instrument:
    """Kraken's trading rules for one pair (AssetPairs). Decimal fields are exact."""

    pair: str  # canonical, e.g. BTC/USD
    kraken_id: str  # e.g. XXBTZUSD (result key in every Kraken response)
    altname: str  # e.g. XBTUSD
    wsname: str  # e.g. XBT/USD
    base_id: str  # e.g. XXBT
    quote_id: str  # e.g. ZUSD
    pair_decimals: int  # price decimals
    lot_decimals: int  # volume decimals
    cost_decimals: int
    ordermin: Decimal  # minimum volume in base units
    costmin: Decimal  # minimum cost in quote units
    tick_size: Decimal

    @property
    def base(self) -> str:
        return self.pair.split("/")[0]

    @property
    def quote(self) -> str:
        return self.pair.split("/")[1]

    @property
    def quote_decimals(self) -> int:
        """Decimals of the quote currency's amounts (cost, fee): :func:`asset_decimals`."""
        return asset_decimals(self.quote)


# base -> (pair_decimals, lot_decimals, ordermin, tick_size) for USD and USDT quotes alike.
# Values as Kraken publishes them in AssetPairs (BTC/USD as quoted in ../shared/kraken/README.md).
_RULES: dict[str, tuple[int, int, str, str]] = {
    "BTC": (1, 8, "0.0001", "0.1"),
    "ETH": (2, 8, "0.002", "0.01"),
    "SOL": (2, 8, "0.02", "0.01"),
    "XRP": (5, 8, "2", "0.00001"),
    "ADA": (6, 8, "5", "0.000001"),
    "LTC": (2, 8, "0.05", "0.01"),
    "DOT": (4, 8, "0.6", "0.0001"),
    "LINK": (5, 8, "0.2", "0.00001"),
    "AVAX": (2, 8, "0.1", "0.01"),
    "DOGE": (7, 8, "30", "0.0000001"),
    "USDT": (5, 8, "5", "0.00001"),
    "USDC": (5, 8, "5", "0.00001"),
}


# Pair ids that follow neither rule above, as Kraken lists them.
_KRAKEN_ID_OVERRIDES: dict[str, str] = {"DOGE/USD": "XDGUSD", "USDT/USD": "USDTZUSD"}


def _make_instrument(base: str, quote: str) -> Instrument:
    pd_, ld, omin, tick = _RULES[base]
    b_id, q_id = kraken_asset_id(base), kraken_asset_id(quote)
    b_alt, q_alt = kraken_asset_alt(base), kraken_asset_alt(quote)
    altname = f"{b_alt}{q_alt}"
    # Legacy X/Z assets against fiat use the concatenated asset ids (XXBTZUSD); others the altname.
    legacy = b_id.startswith("X") and len(b_id) == 4 and q_id.startswith("Z") and len(q_id) == 4
    kraken_id = f"{b_id}{q_id}" if legacy else altname
    kraken_id = _KRAKEN_ID_OVERRIDES.get(f"{base}/{quote}", kraken_id)
    return Instrument(
        pair=f"{base}/{quote}",
        kraken_id=kraken_id,
        altname=altname,
        wsname=f"{b_alt}/{q_alt}",
        base_id=b_id,
        quote_id=q_id,
        pair_decimals=pd_,
        lot_decimals=ld,
        cost_decimals=5,
        ordermin=Decimal(omin),
        costmin=Decimal("0.5"),
        tick_size=Decimal(tick),
    )


#: Canonical pair -> Instrument, for every base above against USD and USDT (stablecoins against USD).
INSTRUMENTS: dict[str, Instrument] = {}
for _b in _RULES:
    for _q in ("USD", "USDT"):
        if _b in STABLECOINS and _q != "USD":
            continue
        _inst = _make_instrument(_b, _q)
        INSTRUMENTS[_inst.pair] = _inst
del _b, _q, _inst


def instrument(name: str) -> Instrument:
    """Kraken trading rules for any spelling of a pair; InputError if Kraken lists no such pair here."""
    pair = normalize_pair(name)
    try:
        return INSTRUMENTS[pair]
    except KeyError:
        raise InputError(f"no Kraken trading rules for pair {pair!r}") from None
