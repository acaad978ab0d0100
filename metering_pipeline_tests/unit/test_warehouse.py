"""One statement for both engines, and a DuckDB file shared with other processes."""

import subprocess
import sys

import pytest

from metering_pipeline.warehouse import Database, WarehouseBusyError, psycopg_placeholders


def test_placeholders_outside_quotes_only():
    sql = "select '?', 'a%b' from t where x = ? and y like 'z%'"
    assert psycopg_placeholders(sql) == ("select '?', 'a%%b' from t where x = %s and y like 'z%%'")


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_literal_question_mark_and_percent_round_trip(engine, request):
    url = request.getfixturevalue(f"{engine}_url")
    with Database(url).connect() as conn:
        row = conn.fetchone("select '?' as q, '5%' as p, cast(? as integer) as n", (7,))
        assert row == ("?", "5%", 7)
        assert conn.fetchone("select '100%'") == ("100%",)


def _hold_duckdb_file(path, seconds: float) -> subprocess.Popen:
    """Another process holding the DuckDB file, like a run or a sensor tick would."""
    script = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
        "print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_duckdb_file_is_waited_for_then_opened(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = _hold_duckdb_file(path, 1.5)
    try:
        with Database(f"duckdb:///{path}").connect() as conn:
            assert conn.fetchone("select 1") == (1,)
        assert holder.poll() is not None  # we got in only after the other process let go
    finally:
        holder.kill()


def test_a_duckdb_file_held_too_long_names_the_file_and_the_way_out(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = _hold_duckdb_file(path, 30)
    try:
        with (
            pytest.raises(WarehouseBusyError, match="one writer at a time") as raised,
            Database(f"duckdb:///{path}", lock_wait_seconds=0.3).connect(),
        ):
            pass
        assert str(path) in str(raised.value)
    finally:
        holder.kill()
