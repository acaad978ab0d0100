"""One statement for both engines: placeholders and literals survive translation."""

import pytest

from metering_pipeline.warehouse import Database, psycopg_placeholders


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
