"""Every spec statement's sympy proof holds (spec.Statement.check), one test per statement id."""

from __future__ import annotations

import pytest

import spec


@pytest.mark.parametrize("statement_id", [pytest.param(i, marks=pytest.mark.statement(i)) for i in spec.ids()])
def test_statement_is_proved(statement_id: str):
    statement = spec.get(statement_id)
    steps = statement.run()
    failed = [name for name, ok in steps if not ok]
    assert steps and not failed, (
        f"{statement_id} ({statement.reference}): {len(failed)} of {len(steps)} proof steps fail: {failed}")
