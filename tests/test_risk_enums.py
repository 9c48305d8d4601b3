"""The codes of the risk state machine are written once (engine.risk.enums): the kernels' NamedTuple
constants are derived from the IntEnums, so they agree field for field, and no kernel module keeps a
hand-mirrored copy or imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.risk import enums as E

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    (E.TradingState, E.STATE),
    (E.KillReason, E.KILL),
    (E.OrderKind, E.KIND),
    (E.FillHow, E.HOW),
    (E.EventCode, E.EVENT),
    (E.Reason, E.REASON),
]


@pytest.mark.parametrize("enum_cls,consts", PAIRS, ids=[e.__name__ for e, _ in PAIRS])
def test_kernel_constants_equal_the_enums(enum_cls, consts):
    assert consts._fields == tuple(m.name for m in enum_cls)
    for m in enum_cls:
        v = getattr(consts, m.name)
        assert type(v) is int and v == m.value, m
    # the NamedTuple type is reachable by name (cached kernels find it again)
    assert getattr(E, type(consts).__name__) is type(consts)


def test_code_relations_the_kernels_rely_on():
    # kill_check_nb emits Reason.KILL_API + kill_reason - 1 for a latched trigger
    for k, r in (
        (E.KillReason.API_INSTABILITY, E.Reason.KILL_API),
        (E.KillReason.SPREAD_ANOMALY, E.Reason.KILL_SPREAD),
        (E.KillReason.VOLATILITY_SPIKE, E.Reason.KILL_VOLATILITY),
        (E.KillReason.DATA_INTEGRITY, E.Reason.KILL_DATA),
    ):
        assert E.Reason.KILL_API + k - 1 == r
    # refusal counts are indexed by reason; bar counts by trading state (effective_state_nb: the tier
    # numbers are the states ACTIVE, REDUCING_1, REDUCING_2)
    assert max(E.Reason) < E.N_REASONS
    assert len(E.TradingState) == E.N_STATES and [int(s) for s in E.TradingState] == list(range(E.N_STATES))


KERNEL_MODULES = ["engine/risk/nb.py", "engine/backtest/nb.py", "engine/risk/machine.py"]


@pytest.mark.parametrize("rel", KERNEL_MODULES)
def test_no_mirrored_codes_or_private_imports(rel):
    tree = ast.parse((ROOT / rel).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{rel} imports private names {private} from {node.module}"
    # no module-level int constants named like the codes (_R_*, _EV_*, _K_*, _HOW_*, states)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        for t in targets:
            names = [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
            for n in names:
                assert not n.startswith(("_R_", "_EV_", "_K_", "_HOW_")), f"{rel} mirrors a code: {n}"
                assert n.lstrip("_") not in E.TradingState.__members__, f"{rel} mirrors a state: {n}"
