"""The ledger on PostgreSQL: every backend-neutral test of tests/test_ledger.py (LedgerSuite), plus
NUMERIC columns, TRUNCATE refused, schema isolation and one-line connection errors.

The server comes from ``KQ_TEST_PG_DSN`` (.ci/run sets postgresql://postgres@127.0.0.1:5432/test).
Set but unreachable: the tests FAIL. Unset: they fail in CI (``CI`` set) and skip elsewhere. Each
test works in a fresh schema ``ledger_test_<uuid>``, dropped afterwards, so parallel runs never meet.
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal as D

import pytest
from test_ledger import H, LedgerSuite, Target, sample_hour

from live_bridge.ledger import Ledger, LedgerError
from live_bridge.ledger import records as rec

PG_ENV = "KQ_TEST_PG_DSN"


def require_pg(dsn: str) -> str:
    """``dsn`` if a server answers there; otherwise the calling test fails (never skips)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {str(e).strip().splitlines()[0]}")
    return dsn


def pg_dsn_from(env) -> str:
    """The server to test against: skip only when neither ``KQ_TEST_PG_DSN`` nor ``CI`` is set;
    otherwise the DSN, which must answer (else the test fails)."""
    dsn = env.get(PG_ENV)
    if not dsn:
        if env.get("CI"):
            pytest.fail(f"{PG_ENV} is not set (.ci/run sets it)")
        pytest.skip(f"{PG_ENV} not set: PostgreSQL ledger tests need a server")
    return require_pg(dsn)


@pytest.fixture(scope="module")
def pg_dsn() -> str:
    return pg_dsn_from(os.environ)


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def schema_name(pg_dsn):
    names: list[str] = []

    def make() -> str:
        names.append(f"ledger_test_{uuid.uuid4().hex[:16]}")
        return names[-1]

    yield make
    for n in names:
        _drop_schema(pg_dsn, n)


class TestLedgerPostgres(LedgerSuite):
    @pytest.fixture
    def target(self, pg_dsn, schema_name):
        t = Target(pg_dsn, schema_name())
        yield t
        t.close()


def test_unreachable_server_fails_the_tests_not_skips():
    down = "postgresql://postgres@127.0.0.1:1/test"
    with pytest.raises(pytest.fail.Exception, match="unreachable"):
        require_pg(down)
    # skipped only with neither the DSN nor CI; in CI, or with a DSN given, a missing server fails
    with pytest.raises(pytest.skip.Exception):
        pg_dsn_from({})
    for env, why in [
        ({"CI": "1"}, "not set"),
        ({PG_ENV: down}, "unreachable"),
        ({"CI": "true", PG_ENV: down}, "unreachable"),
    ]:
        with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match=why) as ei:
            pg_dsn_from(env)
        assert ei.type is pytest.fail.Exception, f"{env}: skipped instead of failing"


def test_unreachable_ledger_is_one_line_without_the_password():
    with pytest.raises(LedgerError) as ei:
        Ledger.open("postgresql://kq:s3cret-pw@127.0.0.1:1/test")
    msg = str(ei.value)
    assert "s3cret-pw" not in msg and "127.0.0.1" in msg and "\n" not in msg and ei.value.exit_code == 2


def test_money_columns_are_numeric_and_truncate_is_refused(pg_dsn, schema_name):
    import sqlalchemy as sa

    t = Target(pg_dsn, schema_name())
    led = t.open()
    sample_hour(led)
    types = dict(
        t.sql(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
            ":s AND table_name = 'ledger_entry'",
            params={"s": t.schema},
        )
    )
    assert [types[c] for c in ("qty", "price", "fee", "cost")] == ["numeric"] * 4
    assert (types["hour"], types["seq"], types["blob"]) == ("bigint", "bigint", "bytea")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        t.sql("TRUNCATE ledger_entry")
    assert led.count() == 15 and led.verify().ok
    t.close()


def test_schemas_are_separate_ledgers(pg_dsn, schema_name):
    a, b = Target(pg_dsn, schema_name()), Target(pg_dsn, schema_name())
    la, lb = a.open(), b.open()
    la.append(rec.order_intent(H, "kq-1", "XBT/USD", "buy", D("1")))
    lb.append(rec.order_intent(H, "kq-1", "XBT/USD", "buy", D("2")))  # the same id, another ledger
    assert (la.count(), lb.count()) == (1, 1)
    assert la.open_intents()[0].qty == 1 and lb.open_intents()[0].qty == 2
    assert la.head() != lb.head()
    a.close()
    b.close()
