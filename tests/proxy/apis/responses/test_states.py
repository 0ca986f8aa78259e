from proxy.apis.responses.states import ResponseItemState, ResponseState
from proxy.record.migrations import TABLES
from proxy.runs import RECORDED


def test_what_a_snapshot_fills_is_its_tables_columns() -> None:
    for kind, table in ((ResponseState, "responses"), (ResponseItemState, "response_items")):
        recorded_table, columns = RECORDED[kind]
        assert recorded_table == table
        assert columns == TABLES[table].columns  # every column, in order: the DDL is the one list
        assert set(columns) <= set(kind.__dataclass_fields__)
