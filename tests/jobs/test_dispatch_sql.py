"""Group commit's cursor with server-side binding (``jobs.dispatch.sql.bound_cursor``): its
array parameters go as binary values, its statements are seen where Django's are (query log,
execute wrappers) and run in the caller's transaction. Real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs.dispatch.sql import bound_cursor
from jobs.models import Contributor

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def test_binary_arrays_round_trip_and_the_statement_is_logged_and_wrapped():
    ids = [uuid.uuid4(), uuid.uuid4()]
    wrapped = []

    def wrapper(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        wrapped.append(sql)
        return execute(sql, params, many, context)

    with (
        CaptureQueriesContext(connection) as queries,
        connection.execute_wrapper(wrapper),
        bound_cursor() as cursor,
    ):
        cursor.execute(
            "SELECT v.id, v.n FROM unnest(%b::uuid[], %b::bigint[]) AS v(id, n)",
            [[str(i) for i in ids], [1, 2**40]],
        )
        rows = cursor.fetchall()
    assert rows == [(ids[0], 1), (ids[1], 2**40)]
    assert len(queries) == 1
    assert "unnest" in queries[0]["sql"]
    assert len(wrapped) == 1


@pytest.mark.django_db(transaction=True)
def test_its_writes_belong_to_the_callers_transaction():
    contributor = Contributor.objects.create()

    def batch_that_fails() -> None:
        with transaction.atomic(), bound_cursor() as cursor:
            cursor.execute(
                f"UPDATE {Contributor._meta.db_table} SET validated_replicas = 7"  # noqa: S608
                " WHERE id = ANY(%b::uuid[])",
                [[str(contributor.pk)]],
            )
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        batch_that_fails()
    contributor.refresh_from_db()
    assert contributor.validated_replicas == 0
