"""Outside Kafka clients against `cohort up`'s embedded broker: produce
JSON with confluent-kafka, run a pipeline into Parquet, read the files back
with pyarrow; a round trip with kafka-python, a client of its own (not
librdkafka), which opens with the newest protocol versions it knows.

    python kafka_client.py COHORT_BINARY HOST:PORT DATA_DIR
"""

import json
import sys
import time

import pyarrow.dataset as ds
from cli import cohort
from confluent_kafka import Producer
from kafka import KafkaConsumer, KafkaProducer

N = 1000


def run_pipeline(binary, address, spec_path, name, spec):
    """Creates pipeline `name` from `spec` and waits until it has committed every message."""
    with open(spec_path, "w") as f:
        f.write(spec)
    cohort(binary, address, "pipeline", "create", spec_path)
    deadline = time.time() + 120
    while True:
        got = json.loads(cohort(binary, address, "pipeline", "get", name, "--output", "json"))
        parts = got.get("partitions", [])
        if parts and got["lag"] == 0 and all(p["committed"] is not None or p["end"] == 0 for p in parts):
            return
        if time.time() > deadline:
            raise SystemExit(f"pipeline {name} did not catch up in 120 s: {got}")
        time.sleep(0.5)


def kafka_python_round_trip(bootstrap):
    """Produces gzip-compressed keyed messages with kafka-python and reads them back in a group."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip")
    for i in range(100):
        producer.send("ci-kafka-python", key=str(i % 7).encode(), value=json.dumps({"i": i}).encode())
    producer.flush(30)
    producer.close()
    # The embedded broker ends a rebalance only after the session timeout
    # less 1 s (kafka-python's default is 45 s), as the README says.
    consumer = KafkaConsumer("ci-kafka-python", bootstrap_servers=bootstrap, group_id="ci-kafka-python",
                             auto_offset_reset="earliest", consumer_timeout_ms=60000,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    seen = set()
    for message in consumer:
        seen.add(json.loads(message.value)["i"])
        if len(seen) == 100:
            break
    consumer.commit()
    consumer.close()
    assert seen == set(range(100)), f"kafka-python read back {len(seen)} of 100"
    print("kafka client: 100 messages produced and read back in a group with kafka-python")


def main(binary, address, data_dir):
    status = json.loads(cohort(binary, address, "status", "--output", "json"))
    bootstrap = status["kafka_bootstrap"]
    assert bootstrap, status
    kafka_python_round_trip(bootstrap)

    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(N):
        url = f"/shop/checkout/{i}" if i % 2 == 0 else f"/browse/{i}"
        producer.produce("ci-clicks", key=str(i), value=json.dumps({"user_id": i, "url": url, "ts": i}))
    producer.produce("ci-clicks", value=b"not json")
    assert producer.flush(30) == 0, "every message delivered"

    out = f"{data_dir}/ci-checkouts/"
    spec = f"{data_dir}/ci-pipeline.toml"
    run_pipeline(binary, address, spec, "ci-checkouts", f"""name = "ci-checkouts"
[source.kafka]
topic = "ci-clicks"
schema = {{ user_id = "Int64", url = "Utf8", ts = "Int64" }}
[transform]
sql = "SELECT user_id, url FROM source WHERE url LIKE '%/checkout%'"
[sink.parquet]
path = "{out}"
roll_every = "1s"
[parallelism]
cpu = "250m"
memory = "256MiB"
""")

    table = ds.dataset(out, format="parquet").to_table()  # hidden in-progress files are ignored
    ids = sorted(set(table.column("user_id").to_pylist()))
    assert ids == list(range(0, N, 2)), f"{len(ids)} distinct ids"
    assert table.column_names == ["user_id", "url"], table.column_names
    print(f"kafka client: {N + 1} messages produced with confluent-kafka, {table.num_rows} rows read back with pyarrow")
    cohort(binary, address, "pipeline", "delete", "ci-checkouts")

    # The same messages upserted into a keyed live table: one row per bucket.
    run_pipeline(binary, address, spec, "ci-latest", """name = "ci-latest"
[source.kafka]
topic = "ci-clicks"
schema = { user_id = "Int64", url = "Utf8", ts = "Int64" }
[transform]
sql = "SELECT user_id % 10 AS bucket, user_id FROM source"
[sink.store]
table = "ci_latest"
key = ["bucket"]
[parallelism]
cpu = "250m"
memory = "256MiB"
""")
    rows = json.loads(cohort(binary, address, "sql", "-e", "SELECT bucket, user_id FROM ci_latest", "--output", "json"))
    assert sorted(r["bucket"] for r in rows) == list(range(10)), rows
    assert all(r["user_id"] % 10 == r["bucket"] for r in rows), rows
    print(f"kafka client: the keyed live table holds one row per key ({len(rows)} rows)")
    cohort(binary, address, "pipeline", "delete", "ci-latest")


if __name__ == "__main__":
    main(*sys.argv[1:])
