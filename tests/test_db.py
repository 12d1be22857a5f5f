"""Bulk rows given as numpy columns (`catalog.db.Columns`) go in row for row on both engines."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from catalog import db as db_module
from catalog.db import Columns, bulk_insert, insert_absent


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(0, 2600),
    flat_rows=st.sampled_from([7, 1000, 1500, db_module.FLAT_ROWS]),
    mixed=st.booleans(),
)
def test_columns_go_in_row_for_row(  # type: ignore[no-untyped-def]
    engine: Engine, monkeypatch, rows: int, flat_rows: int, mixed: bool
) -> None:
    # Blocks of flat_rows rows, each cut into statements of ROWS_PER_STATEMENT (1000) and a
    # shorter last one: 7 and 1500 leave a short statement in every block.
    monkeypatch.setattr(db_module, "FLAT_ROWS", flat_rows)
    rng = np.random.default_rng(rows)
    keys = rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)
    ids = np.arange(rows, dtype=np.int64) * 7 + 2**40
    third = rng.random(rows) if mixed else rng.integers(-5, 5, rows)  # float: the mixed path
    kind = "DOUBLE PRECISION" if mixed else "BIGINT"
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE cols (r INT, k BIGINT, i BIGINT, x {kind})")
        bulk_insert(conn, "cols", ("k", "i", "x"), Columns(keys, ids, third), constants={"r": 3})
        got = conn.exec_driver_sql("SELECT r, k, i, x FROM cols ORDER BY i").all()
        conn.rollback()
    assert [tuple(row) for row in got] == list(
        zip([3] * rows, keys.tolist(), ids.tolist(), third.tolist(), strict=True)
    )


def test_columns_iterate_as_rows_and_refuse_ragged_input() -> None:
    a, b = np.arange(5), np.linspace(0, 1, 5)
    assert list(Columns(a, b)) == list(zip(a.tolist(), b.tolist(), strict=True))
    assert Columns(a, b).flat(1, 3) == [1, 0.25, 2, 0.5]
    with pytest.raises(ValueError, match="one length"):
        Columns(a, b[:4])
    with pytest.raises(ValueError, match="one length"):
        Columns()


def test_insert_absent_returns_the_id_of_each_row_it_inserted(engine: Engine) -> None:
    # 2,500 rows: several statements of ROWS_PER_STATEMENT on SQLite, and rows already there
    # (every third) are neither inserted nor returned.
    digests = [i.to_bytes(4, "big") for i in range(2500)]
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        blob = "BYTEA" if postgres else "BLOB"
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE things (id INTEGER PRIMARY KEY, digest {blob} UNIQUE, n INT)"
        )
        if postgres:
            conn.exec_driver_sql("CREATE TEMPORARY SEQUENCE things_id START 1000")
            conn.exec_driver_sql("ALTER TABLE things ALTER id SET DEFAULT nextval('things_id')")
        old = digests[::3]
        insert_absent(conn, "things", ("digest", "n"), [(d, 0) for d in old], unique="digest")
        inserted = insert_absent(
            conn, "things", ("digest", "n"), [(d, 1) for d in digests], unique="digest"
        )
        stored = {bytes(d): (id_, n) for id_, d, n in conn.exec_driver_sql("SELECT * FROM things")}
        conn.rollback()
    before = frozenset(old)
    new = [d for d in digests if d not in before]
    assert sorted(inserted) == sorted(new)
    assert {d: stored[d][0] for d in new} == inserted
    assert all(stored[d][1] == 1 for d in new) and all(stored[d][1] == 0 for d in old)
