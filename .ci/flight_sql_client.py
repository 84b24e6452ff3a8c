"""An outside client against `cohort up`: the Python ADBC Flight SQL driver
and pyarrow, as a data team would use them.

    python flight_sql_client.py HOST:PORT DATA_DIR TOKEN

It signs in as ADBC users do, with a username and password (the password
is a Cohort token; the handshake answers with the bearer token to use),
over TLS checked against the cluster CA that `cohort up` made.
"""

import os
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight


def tables_named(objects, name):
    return [
        table
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
        if table["table_name"] == name
    ]


def main(address, data_dir, token):
    with open(f"{data_dir}/cluster/coordinator/ca.pem") as f:
        tls = {"adbc.flight.sql.client_option.tls_root_certs": f.read()}

    # Plaintext: refused.
    try:
        with flight_sql.connect(f"grpc://{address}", db_kwargs={"username": "ci", "password": token}) as conn:
            conn.cursor().execute("SELECT 1")
    except flight_sql.Error:
        pass
    else:
        raise AssertionError("a plaintext connection was answered")

    # Without credentials: refused, with the way to get a token.
    try:
        with flight_sql.connect(f"grpc+tls://{address}", db_kwargs=tls) as conn:
            conn.cursor().execute("SELECT 1")
    except flight_sql.Error as e:
        assert "no token" in str(e), e
    else:
        raise AssertionError("a query without a token was answered")

    options = {"username": "ci", "password": token, **tls}
    with flight_sql.connect(f"grpc+tls://{address}", db_kwargs=options) as conn:
        cur = conn.cursor()
        cur.execute(
            "COPY (SELECT i AS id, i % 3 AS k FROM generate_series(1, 1000) t(i)) "
            f"TO '{data_dir}/ci_events/' STORED AS PARQUET"
        )
        cur.execute(
            f"CREATE EXTERNAL TABLE ci_events STORED AS PARQUET LOCATION '{data_dir}/ci_events/'"
        )

        # The catalog, as ADBC lists it (GetCatalogs, GetDbSchemas, GetTables with schemas).
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        found = tables_named(objects, "ci_events")
        assert found, f"ci_events not listed: {objects}"
        columns = [c["column_name"] for c in found[0]["table_columns"]]
        assert columns == ["id", "k"], columns
        schema = conn.adbc_get_table_schema("ci_events")
        assert schema.names == ["id", "k"], schema

        # A query, read as Arrow and as rows.
        cur.execute("SELECT k, count(*) AS n FROM ci_events GROUP BY k ORDER BY k")
        table = cur.fetch_arrow_table()
        assert table.to_pylist() == [
            {"k": 0, "n": 333},
            {"k": 1, "n": 334},
            {"k": 2, "n": 333},
        ], table.to_pylist()

        # A prepared statement with a bound parameter.
        cur.execute("SELECT count(*) AS n FROM ci_events WHERE k = $1", parameters=(1,))
        assert cur.fetchone()[0] == 334
        # ... and with `?`, as JDBC and most ADBC users write it.
        cur.execute("SELECT count(*) AS n FROM ci_events WHERE k = ? AND id > ?", parameters=(1, 0))
        assert cur.fetchone()[0] == 334

        cur.adbc_prepare("SELECT id FROM ci_events WHERE id <= 3 ORDER BY id")
        cur.execute("SELECT id FROM ci_events WHERE id <= 3 ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3]

        # One statement, many rows of parameters (executemany): the rows go
        # in as one INSERT, so one new file, and the next query sees them.
        files_before = len(os.listdir(f"{data_dir}/ci_events"))
        cur.executemany("INSERT INTO ci_events VALUES (?, ?)", [(1000 + i, 1) for i in range(1, 501)])
        cur.execute("SELECT count(*) AS n, sum(id) AS s FROM ci_events WHERE k = 1 AND id > 1000")
        assert cur.fetchone() == (500, sum(1000 + i for i in range(1, 501)))
        files_after = len(os.listdir(f"{data_dir}/ci_events"))
        assert files_after == files_before + 1, (files_before, files_after)

        # Errors carry the server's words.
        try:
            cur.execute("SELECT * FROM no_such_table")
        except flight_sql.Error as e:
            assert "no_such_table" in str(e), e
        else:
            raise AssertionError("a missing table was not an error")

        # Bulk ingest (adbc_ingest) makes and grows a live in-memory table
        # that SQL reads at once; a table over files takes no ingest.
        rows = pa.table({"id": pa.array(range(100), pa.int64()), "name": [f"n{i}" for i in range(100)]})
        assert cur.adbc_ingest("ci_live", rows, mode="create") == 100
        assert cur.adbc_ingest("ci_live", rows.slice(0, 10), mode="append") == 10
        cur.execute("SELECT count(*) AS n, count(DISTINCT id) AS d FROM ci_live")
        assert cur.fetchone() == (110, 100)
        try:
            cur.adbc_ingest("ci_events", rows, mode="append")
        except flight_sql.Error as e:
            assert "not a live table" in str(e), e
        else:
            raise AssertionError("an ingest into a table over files was accepted")
        cur.execute("DROP TABLE ci_live")
        # ADBC sends nothing for an ingest of no rows: the server says so.
        try:
            cur.adbc_ingest("ci_empty", rows.slice(0, 0), mode="create")
        except flight_sql.Error as e:
            assert "ingest of 0 rows sends nothing" in str(e), e

        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Cohort", info
    jdbc_metadata(address, data_dir, token)
    print(f"ADBC Flight SQL client against {address}: ok (pyarrow {pa.__version__})")


def command(name, fields=b""):
    """A Flight SQL command as a descriptor carries it: a protobuf `Any`."""
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()
    return b"\x0a" + bytes([len(url)]) + url + (b"\x12" + bytes([len(fields)]) + fields if fields else b"")


def jdbc_metadata(address, data_dir, token):
    """What JDBC's DatabaseMetaData asks (drivers before 2026 fail on a
    missing SqlInfo item), read by Arrow C++ through pyarrow.flight."""
    with open(f"{data_dir}/cluster/coordinator/ca.pem", "rb") as f:
        client = flight.FlightClient(f"grpc+tls://{address}", tls_root_certs=f.read())
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])

    def fetch(cmd):
        info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), options)
        return client.do_get(info.endpoints[0].ticket, options).read_all()

    items = {row["info_name"]: row["value"] for row in fetch(command("CommandGetSqlInfo")).to_pylist()}
    for item in [0, 504, 508, 509, 515, 517, 541, 563, 567, 572]:
        assert item in items, f"SqlInfo {item} missing from {sorted(items)}"
    assert "SELECT" in items[508], items[508][:10]
    types = fetch(command("CommandGetXdbcTypeInfo")).column("type_name").to_pylist()
    assert "BIGINT" in types and "VARCHAR" in types, types
    table = b"ci_events"
    keys = fetch(command("CommandGetPrimaryKeys", b"\x1a" + bytes([len(table)]) + table))
    assert keys.num_rows == 0 and "key_sequence" in keys.schema.names, keys
    imported = fetch(command("CommandGetImportedKeys", b"\x1a" + bytes([len(table)]) + table))
    assert imported.num_rows == 0 and len(imported.schema) == 13, imported.schema
    # A query that fails while its rows are computed is the client's
    # mistake (INVALID_ARGUMENT), not the server's (INTERNAL).
    query = b"SELECT 1 / (id - id) FROM ci_events"
    try:
        fetch(command("CommandStatementQuery", b"\x0a" + bytes([len(query)]) + query))
    except pa.ArrowInvalid as e:
        assert "divide by zero" in str(e).lower(), e
    else:
        raise AssertionError("1 / 0 answered")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
