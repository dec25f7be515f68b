"""Avro, Protobuf and JSON Schema topics in the Confluent wire format, through a
schema registry, on Apache Kafka: messages written by weir's producer and by
Confluent's own serializers land exactly once, writer schemas evolve
compatibly into the contract's columns, incompatible ones and broken frames
go to the DLQ naming the schema ID, and a registry that goes away loses
nothing.

The registry is the small one in schema_registry.py (see the README for why
no real registry server runs here)."""

import json
import math
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import (WEIR, duckdb_connection, free_port, read_report, spawn, table_path, weir,
                      write_job)
from schema_registry import Registry
from test_broker_e2e import (assert_exactly_once, assert_outputs_match_oracle, run_command,
                             running, start_run, stop_gracefully, stored, wait_for_count)


@pytest.fixture
def registry():
    server = Registry(free_port()).start()
    yield server
    server.stop()


def avro_job(tmp_path, broker, topic, data, registry, fields=(), max_events=200,
             format="avro"):
    """The clickstream job reading `format` through `registry`, with extra
    contract `fields` (TOML inline tables)."""
    job = write_job(tmp_path / "job.toml", broker, topic, data, max_events=max_events)
    text = job.read_text()
    text = text.replace(
        "max_message_bytes = 1048576",
        f'max_message_bytes = 1048576\nformat = "{format}"\n'
        f'registry = {{ url = "{registry.url}" }}')
    for field in fields:
        text = text.replace('  { name = "price",    type = "float64" },',
                            f'  {{ name = "price",    type = "float64" }},\n  {field},')
    job.write_text(text)
    return job


def without_fields(job):
    """`job` with no `schema.fields`: it takes them from its registry subject."""
    job.write_text(re.sub(r"\nfields = \[.*?\n\]\n", "\n", job.read_text(), flags=re.S))
    assert "fields" not in job.read_text().split("[schema]")[1].split("[dedup]")[0]
    return job


# The click's columns as a Protobuf or JSON Schema subject gives them.
SUBJECT_COLUMNS = {"event_id": "VARCHAR", "ts": "TIMESTAMP WITH TIME ZONE", "user_id": "VARCHAR",
                   "page": "VARCHAR", "action": "VARCHAR", "country": "VARCHAR",
                   "price": "DOUBLE"}


def stored_columns(con, raw):
    """The table's columns and DuckDB types, weir's own (`_…`) left out."""
    return {name: ty for name, ty in con.sql(
        f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM delta_scan('{raw}'))"
    ).fetchall() if not name.startswith("_")}


FIELDS_FROM = pytest.mark.parametrize("from_subject", [False, True],
                                      ids=["spec-fields", "subject-fields"])


@pytest.mark.parametrize("format,schema_type",
                         [("avro", None), ("protobuf", "PROTOBUF"), ("json_schema", "JSON")])
def test_weir_produce_lands_exactly_once_through_a_kill(broker, registry, tmp_path, format,
                                                       schema_type):
    """`weir produce` registers the job's contract in the job's format and
    frames each event; `weir run` fetches the schema once, lands every event
    exactly once although it is SIGKILLed mid-stream, and the outputs equal
    the oracle computed from the producer's JSON report."""
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "clicks", data, registry, format=format)
    report = tmp_path / "produced.csv"
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", 3000, "--malformed-ratio", 0.02, "--duplicate-ratio", 0.02,
         "--late-ratio", 0, "--seed", 5, "--report", report, timeout=120)
    produced = read_report(report)
    assert registry.subjects == {"clicks-value": [1]}
    assert registry.schemas[0].get("schemaType") == schema_type, registry.schemas
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, 500, 120, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_run(job, log)
        wait_for_count(data, stored(produced), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_oracle(job, produced)
    # Once per process at most (the second may have found nothing left to read).
    assert registry.fetches in ([1], [1, 1]), registry.fetches
    con = duckdb_connection()
    reasons = {r for (r,) in con.sql(
        f"SELECT error FROM delta_scan('{table_path(data, 'clickstream', 'dlq')}')").fetchall()}
    assert any("Confluent wire format" in r for r in reasons), reasons


CLICK_V1 = {
    "type": "record", "name": "Click", "namespace": "shop",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "user_id", "type": ["null", "string"], "default": None},
        {"name": "page", "type": "string"},
        {"name": "action", "type": {"type": "enum", "name": "Action",
                                    "symbols": ["view", "click", "purchase"]}},
        {"name": "country", "type": "string"},
        {"name": "price", "type": ["null", "float"], "default": None},
        {"name": "device", "type": {"type": "record", "name": "Device", "fields": [
            {"name": "os", "type": "string"}, {"name": "model", "type": "string"}]}},
    ],
}
# Compatible: a field added with a default, price widened to double.
CLICK_V2 = {**CLICK_V1, "fields": [
    *[f for f in CLICK_V1["fields"] if f["name"] != "price"],
    {"name": "price", "type": ["null", "double"], "default": None},
    {"name": "referrer", "type": ["null", "string"], "default": None},
]}
# Incompatible with the contract: the event ID became a number.
CLICK_V3 = {**CLICK_V1, "fields": [
    {"name": "event_id", "type": "long"},
    *[f for f in CLICK_V1["fields"] if f["name"] != "event_id"],
]}


def click(i, version, now_ms):
    event = {
        "event_id": f"e{version}-{i}", "ts": now_ms - i, "user_id": None if i % 7 == 0 else f"u{i % 13}",
        "page": f"/p/{i % 5}", "action": ["view", "click", "purchase"][i % 3],
        "country": ["DE", "US"][i % 2], "price": None if i % 3 else round(i * 0.25, 2),
        "device": {"os": "linux", "model": f"m{i % 4}"},
    }
    if version == 2:
        event["referrer"] = None if i % 2 else f"https://ref/{i}"
    if version == 3:
        event["event_id"] = i
    return event


def serialized(registry, schema, topic, events) -> list[bytes]:
    """`events` as Confluent's AvroSerializer writes them (it registers
    `schema` under `<topic>-value` on first use)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(SchemaRegistryClient({"url": registry.url}), json.dumps(schema))
    context = SerializationContext(topic, MessageField.VALUE)
    return [serializer(event, context) for event in events]


def send(broker, topic, values) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def test_confluent_serializer_evolution_and_refusals(broker, registry, tmp_path):
    """Confluent's AvroSerializer writes v1, then v2 (a new field, a wider
    type), then v3 (the event ID's type changed): v1 and v2 land with the
    new column null for v1 rows and every value intact; v3 goes to the DLQ
    with its schema ID; so do a frame naming an ID the registry lacks and a
    truncated body. DuckDB and polars agree on the rows and the sums."""
    broker.create_topic("orders", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "orders", data, registry,
                   fields=['{ name = "referrer", type = "string" }'])
    now_ms = int(time.time() * 1000)
    v1 = [click(i, 1, now_ms) for i in range(400)]
    v2 = [click(i, 2, now_ms) for i in range(300)]
    v3 = [click(i, 3, now_ms) for i in range(50)]
    for schema, events in ((CLICK_V1, v1), (CLICK_V2, v2), (CLICK_V3, v3)):
        send(broker, "orders", serialized(registry, schema, "orders", events))
    assert len(registry.schemas) == 3
    [good] = serialized(registry, CLICK_V1, "orders", [click(999, 1, now_ms)])
    broken = [b"\x00\x00\x00\x03\xe7" + good[5:],   # schema ID 999: not in the registry
              good[: len(good) // 2],                # truncated body
              b'{"event_id": "json"}']              # not framed at all
    send(broker, "orders", broken)

    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, len(v1) + len(v2) + len(v3) + len(broken), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()

    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")
    dlq = table_path(data, "clickstream", "dlq")
    rows = con.sql(f"SELECT event_id, epoch_ms(ts), user_id, page, action, country, price, "
                   f"referrer FROM delta_scan('{raw}') ORDER BY event_id").fetchall()
    want = sorted((e["event_id"], e["ts"], e["user_id"], e["page"], e["action"], e["country"],
                   e["price"], e.get("referrer")) for e in v1 + v2)
    assert len(rows) == len(want)
    for got, expected in zip(rows, want):
        assert got[:6] == expected[:6] and got[7] == expected[7], (got, expected)
        assert (got[6] is None) == (expected[6] is None)
        assert got[6] is None or math.isclose(got[6], expected[6], rel_tol=1e-6), (got, expected)
    assert con.sql(f"SELECT count(*) FROM delta_scan('{raw}') WHERE referrer IS NOT NULL "
                   f"AND event_id LIKE 'e1-%'").fetchone()[0] == 0
    total = con.sql(f"SELECT sum(price) FROM delta_scan('{raw}')").fetchone()[0]
    assert math.isclose(total, sum(e["price"] or 0 for e in v1 + v2), rel_tol=1e-9)

    import polars as pl

    frame = pl.read_delta(str(raw))
    assert frame.height == len(want)
    assert frame["referrer"].null_count() == len(v1) + sum(1 for e in v2 if e["referrer"] is None)

    reasons = [r for (r,) in con.sql(f"SELECT error FROM delta_scan('{dlq}')").fetchall()]
    assert len(reasons) == len(v3) + len(broken), reasons
    refused_v3 = [r for r in reasons if re.search(r"schema ID 3: field `event_id` is Int64", r)]
    assert len(refused_v3) == len(v3), reasons
    assert any("schema ID 999 is not in the registry" in r for r in reasons), reasons
    assert any("schema ID 1:" in r and "Avro" in r for r in reasons), reasons
    assert any("Confluent wire format" in r for r in reasons), reasons

    status = weir("status", "--job", job, timeout=60).stdout
    assert "schema ID 3 refused: 50 messages in the DLQ, e.g. schema ID 3: field `event_id`" \
        in status, status
    assert "schema ID 999 refused: 1 messages" in status, status


# The click with an array and a decimal besides its nested record.
NESTED_V1 = {**CLICK_V1, "fields": [
    *CLICK_V1["fields"],
    {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    {"name": "total", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                        "precision": 9, "scale": 2}], "default": None},
    {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}},
]}
NESTED_V2 = {**NESTED_V1, "fields": [
    *[f for f in NESTED_V1["fields"] if f["name"] != "price"],
    {"name": "price", "type": ["null", "double"], "default": None},
    {"name": "referrer", "type": ["null", "string"], "default": None},
]}


def nested_click(i, version, now_ms):
    from decimal import Decimal

    return {**click(i, version, now_ms), "tags": [f"t{j}" for j in range(i % 3)],
            "total": None if i % 5 == 0 else Decimal(i * 25) / 100, "attributes": {"a": str(i)}}


def test_a_contract_taken_from_the_registry_subject(broker, registry, tmp_path):
    """A job that leaves `schema.fields` out takes them from its subject's
    newest Avro schema when it starts: the record's scalars become columns,
    the nested `device` a struct, `tags` a list, `total` a decimal (the map
    has no column type yet and is named in the log), and Confluent-serialized
    v1 events land with their values, read back by DuckDB and polars. Once
    v2 (a field added, price widened) is the newest, a restart adds
    `referrer` as a column, null for the v1 rows."""
    broker.create_topic("orders", 2)
    data = tmp_path / "data"
    job = without_fields(avro_job(tmp_path, broker, "orders", data, registry))
    now_ms = int(time.time() * 1000)
    v1 = [nested_click(i, 1, now_ms) for i in range(300)]
    send(broker, "orders", serialized(registry, NESTED_V1, "orders", v1))

    def run_until(count, log):
        with open(log, "w") as out, running(job, out) as proc:
            wait_for_count(data, count, 120, proc)
            assert stop_gracefully(proc) == 0, log.read_text()
        return log.read_text()

    logged = run_until(len(v1), tmp_path / "v1.log")
    assert "attributes (map)" in logged and "orders-value" in logged, logged
    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")

    def columns():
        return dict(con.sql(f"SELECT column_name, column_type FROM "
                            f"(DESCRIBE SELECT * FROM delta_scan('{raw}'))").fetchall())

    assert {c: columns()[c] for c in ("event_id", "user_id", "page", "action", "price",
                                      "device", "tags", "total")} == {
        "event_id": "VARCHAR", "user_id": "VARCHAR", "page": "VARCHAR", "action": "VARCHAR",
        "price": "DOUBLE", "device": "STRUCT(os VARCHAR, model VARCHAR)",
        "tags": "VARCHAR[]", "total": "DECIMAL(9,2)"}, columns()
    assert "attributes" not in columns() and "referrer" not in columns()

    def stored():
        referrer = "referrer" if "referrer" in columns() else "NULL"
        return sorted(con.sql(
            f"SELECT event_id, epoch_ms(ts), user_id, page, action, country, price, "
            f"{referrer}, device.os, device.model, tags, total FROM delta_scan('{raw}')"
        ).fetchall())

    def wanted(events):
        return sorted((e["event_id"], e["ts"], e["user_id"], e["page"], e["action"],
                       e["country"], e["price"], e.get("referrer"), e["device"]["os"],
                       e["device"]["model"], e["tags"], e["total"]) for e in events)

    assert stored() == wanted(v1)

    import polars as pl

    frame = pl.read_delta(str(raw)).sort("event_id")
    by_id = {e["event_id"]: e for e in v1}
    assert frame["device"].struct.field("model").to_list() == [
        by_id[i]["device"]["model"] for i in frame["event_id"]]
    assert frame["tags"].to_list() == [by_id[i]["tags"] for i in frame["event_id"]]
    assert frame["total"].to_list() == [by_id[i]["total"] for i in frame["event_id"]]

    v2 = [nested_click(i, 2, now_ms) for i in range(200)]
    send(broker, "orders", serialized(registry, NESTED_V2, "orders", v2))
    run_until(len(v1) + len(v2), tmp_path / "v2.log")
    assert columns().get("referrer") == "VARCHAR", columns()
    assert stored() == wanted(v1 + v2)

    # v3's device record gained a field: a restart keeps the stored struct
    # (a stored type never changes) and names the new field in the log.
    device = {"type": "record", "name": "Device", "fields": [
        {"name": "os", "type": "string"}, {"name": "model", "type": "string"},
        {"name": "screen", "type": "string", "default": ""}]}
    nested_v3 = {**NESTED_V2, "fields": [
        {**f, "type": device} if f["name"] == "device" else f for f in NESTED_V2["fields"]]}
    v3 = [nested_click(i, 2, now_ms) for i in range(200, 260)]
    for event in v3:
        event["device"]["screen"] = "hd"
    send(broker, "orders", serialized(registry, nested_v3, "orders", v3))
    logged = run_until(len(v1) + len(v2) + len(v3), tmp_path / "v3.log")
    assert "device.screen (added inside a record" in logged, logged
    assert columns()["device"] == "STRUCT(os VARCHAR, model VARCHAR)", columns()
    assert stored() == wanted(v1 + v2 + v3)


def metric(port, name) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values)


def healthz(port) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def test_a_registry_down_for_ten_seconds_loses_nothing(broker, registry, tmp_path):
    """With a writer schema weir has not fetched yet, the registry goes away
    for 10 s: the batch waits (retries counted in /metrics, the reason on
    /healthz) and every event lands once the registry is back."""
    broker.create_topic("clicks", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "clicks", data, registry,
                   fields=['{ name = "referrer", type = "string" }'])
    now_ms = int(time.time() * 1000)
    send(broker, "clicks", serialized(registry, CLICK_V1, "clicks",
                                      [click(i, 1, now_ms) for i in range(200)]))
    # Registered now, sent while the registry is down: weir has not seen its ID.
    v2 = serialized(registry, CLICK_V2, "clicks", [click(i, 2, now_ms) for i in range(300)])
    port = free_port()
    with open(tmp_path / "run.log", "w") as log:
        proc = spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                     stdout=log, stderr=subprocess.STDOUT)
        wait_for_count(data, 200, 120, proc)
        registry.stop()
        send(broker, "clicks", v2)
        deadline = time.monotonic() + 60
        while metric(port, "weir_registry_retries_total") < 3:
            assert time.monotonic() < deadline, "weir never retried the registry"
            time.sleep(0.5)
        assert "schema ID 2" in healthz(port), healthz(port)
        time.sleep(10)
        registry.start()
        wait_for_count(data, 500, 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")
    assert con.sql(f"SELECT count(*), count(DISTINCT event_id) FROM delta_scan('{raw}')"
                   ).fetchone() == (500, 500)
    dlq = table_path(data, "clickstream", "dlq")
    assert con.sql(f"SELECT count(*) FROM delta_scan('{dlq}')").fetchone()[0] == 0


CLICK_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Click", "type": "object",
    "properties": {
        "event_id": {"type": "string"},
        "ts": {"type": "integer"},
        "user_id": {"type": ["string", "null"]},
        "page": {"type": "string"},
        "action": {"enum": ["view", "click", "purchase"]},
        "country": {"type": "string", "maxLength": 2},
        "price": {"type": ["number", "null"]},
        "device": {"type": "object", "properties": {"os": {"type": "string"},
                                                    "model": {"type": "string"}}},
    },
    "required": ["event_id", "ts", "page", "action", "country"],
}


@FIELDS_FROM
def test_json_schema_messages_are_validated_against_their_writer_schema(broker, registry,
                                                                       tmp_path, from_subject):
    """Confluent's JSONSerializer writes events under a JSON Schema; weir
    validates each against the schema its ID names: a country longer than
    the schema allows (the contract alone would take it) goes to the DLQ with
    the schema ID and the path, as does a message naming an Avro schema, an
    unframed one and one naming an ID the registry lacks. The same holds for
    a job that takes its fields from the subject's JSON Schema (the nested
    `device` object a struct column)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    broker.create_topic("events", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "events", data, registry, format="json_schema")
    if from_subject:
        without_fields(job)
    now_ms = int(time.time() * 1000)
    events = [click(i, 1, now_ms) for i in range(300)]
    serializer = JSONSerializer(json.dumps(CLICK_JSON_SCHEMA),
                                SchemaRegistryClient({"url": registry.url}))
    context = SerializationContext("events", MessageField.VALUE)
    values = [serializer(event, context) for event in events]
    json_id = int.from_bytes(values[0][1:5], "big")
    [avro_value] = serialized(registry, CLICK_V1, "other", [click(0, 1, now_ms)])
    too_long = {**events[0], "event_id": "long-country", "country": "GERMANY"}
    broken = [
        values[0][:5] + json.dumps(too_long).encode(),  # valid for the contract, not the schema
        avro_value,                                     # an Avro schema's ID
        json.dumps(events[1]).encode(),                 # not framed
        b"\x00\x00\x00\x07\xd0" + json.dumps(events[2]).encode(),  # ID 2000: unknown
    ]
    send(broker, "events", values + broken)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, len(values) + len(broken), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")
    if from_subject:
        assert stored_columns(con, raw) == {
            **SUBJECT_COLUMNS, "device": "STRUCT(model VARCHAR, os VARCHAR)"}
        assert con.sql(f"SELECT event_id, device.model FROM delta_scan('{raw}') "
                       f"ORDER BY event_id").fetchall() == sorted(
            (e["event_id"], e["device"]["model"]) for e in events)
    got = con.sql(f"SELECT event_id, epoch_ms(ts), price FROM delta_scan('{raw}') "
                  f"ORDER BY event_id").fetchall()
    assert got == sorted((e["event_id"], e["ts"], e["price"]) for e in events)
    dlq = table_path(data, "clickstream", "dlq")
    reasons = sorted(r for (r,) in con.sql(f"SELECT error FROM delta_scan('{dlq}')").fetchall())
    assert len(reasons) == len(broken), reasons
    assert any(r.startswith(f"schema ID {json_id}: ") and "country" in r for r in reasons), reasons
    assert any("is AVRO, and the job reads JSON" in r for r in reasons), reasons
    assert any("Confluent wire format" in r for r in reasons), reasons
    assert any("schema ID 2000 is not in the registry" in r for r in reasons), reasons


def click_proto():
    """shop.Click and shop.Other as Python classes built from a descriptor
    made here (no protoc): what Confluent's ProtobufSerializer is given."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="shop/click.proto", package="shop", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])
    click = file.message_type.add(name="Click")
    action = click.enum_type.add(name="Action")
    for number, name in enumerate(["view", "click", "purchase"]):
        action.value.add(name=name, number=number)
    device = click.nested_type.add(name="Device")
    device.field.add(name="os", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    fields = [("event_id", F.TYPE_STRING, None, False), ("ts", F.TYPE_MESSAGE,
              ".google.protobuf.Timestamp", False), ("user_id", F.TYPE_STRING, None, True),
              ("page", F.TYPE_STRING, None, False), ("action", F.TYPE_ENUM,
              ".shop.Click.Action", False), ("country", F.TYPE_STRING, None, False),
              ("price", F.TYPE_DOUBLE, None, True), ("device", F.TYPE_MESSAGE,
              ".shop.Click.Device", False)]
    for number, (name, type_, type_name, optional) in enumerate(fields, 1):
        field = click.field.add(name=name, number=number, type=type_, label=F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
        if optional:  # proto3 `optional`: a synthetic oneof gives it presence
            field.proto3_optional = True
            field.oneof_index = len(click.oneof_decl)
            click.oneof_decl.add(name=f"_{name}")
    other = file.message_type.add(name="Other")
    other.field.add(name="event_id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return [message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shop.{name}"))
            for name in ("Click", "Other")]


@FIELDS_FROM
def test_protobuf_messages_of_two_types_through_confluents_serializer(broker, registry,
                                                                      tmp_path, from_subject):
    """Confluent's ProtobufSerializer writes shop.Click (a Timestamp, an enum,
    optional fields, a nested message) and shop.Other (the second type in
    the file: its event ID is an int64): Click rows land with every value
    (microsecond times, enum names, absent optionals null), Other's go to
    the DLQ naming the schema ID and the field, so does a truncated body.
    The same holds for a job that takes its fields from the subject's first
    message type (the nested message a struct column)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    Click, Other = click_proto()
    broker.create_topic("protos", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "protos", data, registry, format="protobuf")
    if from_subject:
        without_fields(job)
    client = SchemaRegistryClient({"url": registry.url})
    context = SerializationContext("protos", MessageField.VALUE)
    now_us = int(time.time() * 1_000_000)
    events, values = [], []
    serialize = ProtobufSerializer(Click, client, {"use.deprecated.format": False})
    for i in range(400):
        event = click(i, 1, now_us // 1000)
        message = Click(event_id=event["event_id"], page=event["page"], country=event["country"],
                        action=["view", "click", "purchase"].index(event["action"]))
        us = now_us - i * 1_007
        message.ts.seconds, message.ts.nanos = us // 10**6, us % 10**6 * 1000
        if event["user_id"] is not None:
            message.user_id = event["user_id"]
        if event["price"] is not None:
            message.price = event["price"]
        message.device.os = "linux"
        values.append(serialize(message, context))
        events.append((event["event_id"], now_us - i * 1_007, event["user_id"],
                       event["action"], event["price"]))
    others = [ProtobufSerializer(Other, client, {"use.deprecated.format": False})(
        Other(event_id=i), context) for i in range(30)]
    broken = [values[0][: len(values[0]) - 4]]
    send(broker, "protos", values + others + broken)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, len(values) + len(others) + len(broken), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")
    if from_subject:
        assert stored_columns(con, raw) == {**SUBJECT_COLUMNS, "device": "STRUCT(os VARCHAR)"}
        assert con.sql(f"SELECT count(*) FROM delta_scan('{raw}') "
                       f"WHERE device.os = 'linux'").fetchone()[0] == len(values)
    got = con.sql(f"SELECT event_id, epoch_us(ts), user_id, action, price "
                  f"FROM delta_scan('{raw}') ORDER BY event_id").fetchall()
    want = sorted(events)
    assert len(got) == len(want)
    for row, expected in zip(got, want):
        assert row == expected, (row, expected)
    dlq = table_path(data, "clickstream", "dlq")
    reasons = [r for (r,) in con.sql(f"SELECT error FROM delta_scan('{dlq}')").fetchall()]
    assert len(reasons) == len(others) + len(broken), reasons
    other = [r for r in reasons if "field `event_id` of shop.Other is int64" in r]
    assert len(other) == len(others) and other[0].startswith("schema ID 1: "), reasons
    assert any("malformed Protobuf body" in r for r in reasons), reasons


def test_reprocess_and_verify_decode_avro_payloads_through_the_registry(broker, registry,
                                                                        tmp_path):
    """raw keeps each Avro message's framed bytes; `weir verify` and `weir
    reprocess` decode them again through the registry (a process of their
    own, so a fetch of their own) and rebuild the outputs exactly; with the
    registry gone, reprocess fails naming it instead of refusing the rows."""
    import datetime

    broker.create_topic("clicks", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "clicks", data, registry)
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", 3000, "--backfill", "3days", "--malformed-ratio", 0, "--duplicate-ratio", 0,
         "--late-ratio", 0, "--seed", 9, timeout=120)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, 3000, 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    fetched = len(registry.fetches)
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).date()
    span = ["--from", day.isoformat(), "--to", day.isoformat()]
    assert "no differences" in weir("verify", "--job", job, *span, timeout=240).stdout
    assert len(registry.fetches) > fetched, "verify decoded the payloads through the registry"
    report = weir("reprocess", "--job", job, *span, timeout=240).stdout
    assert "replaced" in report and "no longer match the contract" not in report, report
    assert "no differences" in weir("verify", "--job", job, *span, timeout=240).stdout
    registry.stop()
    down = subprocess.run([WEIR, "reprocess", "--job", str(job), *span], capture_output=True,
                          text=True, timeout=240)
    assert down.returncode != 0 and "schema registry" in down.stderr, down.stderr


KEY_SCHEMA = {"type": "record", "name": "ClickKey", "namespace": "shop",
              "fields": [{"name": "user", "type": "string"}, {"name": "region", "type": "int"}]}


def test_avro_keys_through_the_registry_become_a_typed_key_column(broker, registry, tmp_path):
    """Confluent's AvroSerializer writes the keys (a record, under
    `keyed-key`) and the values: `_key` is a struct DuckDB reads field by
    field, equal to each sent key; a key that is not framed Avro sends its
    message to the DLQ naming the key. An output that selects `_key` gets
    the same, and `weir reprocess` of the day rebuilds it with every stored
    key (put back decoded, not read again)."""
    import datetime

    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    broker.create_topic("keyed", 2)
    data = tmp_path / "data"
    job = avro_job(tmp_path, broker, "keyed", data, registry)
    job.write_text(job.read_text().replace(
        'format = "avro"', 'format = "avro"\ncolumns = ["key"]\nkey_format = "avro"')
        + '\n[[outputs]]\nname = "keyed"\nsql = "SELECT event_id, ts, _key FROM batch"\n')
    # Three days old, so that day can be reprocessed once the two newest
    # events (one per partition, sent last) have moved the watermark on.
    now_ms = int(time.time() * 1000)
    events = [click(i, 1, now_ms - 3 * 86_400_000) for i in range(200)]
    events += [click(1000 + p, 1, now_ms) for p in range(2)]
    keys = [{"user": f"u{i % 13}", "region": i % 4} for i in range(len(events))]
    values = serialized(registry, CLICK_V1, "keyed", events)
    key_serializer = AvroSerializer(SchemaRegistryClient({"url": registry.url}),
                                    json.dumps(KEY_SCHEMA))
    context = SerializationContext("keyed", MessageField.KEY)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for i, (key, value) in enumerate(zip(keys, values)):
        partition = {"partition": i - 200} if i >= 200 else {}
        producer.produce("keyed", key=key_serializer(key, context), value=value, **partition)
    producer.produce("keyed", key=b"plain", value=values[0])
    assert producer.flush(30) == 0

    with open(tmp_path / "run.log", "w") as log, running(job, log) as proc:
        wait_for_count(data, len(events) + 1, 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    con = duckdb_connection()
    raw = table_path(data, "clickstream", "raw")
    want = sorted((e["event_id"], k["user"], k["region"]) for e, k in zip(events, keys))

    keyed = table_path(data, "clickstream", "keyed")

    def stored(table=raw):
        return sorted(con.sql(f"SELECT event_id, _key.user, _key.region "
                              f"FROM delta_scan('{table}')").fetchall())

    assert stored() == want and stored(keyed) == want
    dlq = table_path(data, "clickstream", "dlq")
    [(reason,)] = con.sql(f"SELECT error FROM delta_scan('{dlq}')").fetchall()
    assert reason.startswith("the Kafka key: ") and "wire format" in reason, reason

    day = datetime.datetime.fromtimestamp(events[0]["ts"] / 1000, datetime.timezone.utc)
    day = day.date().isoformat()
    report = weir("reprocess", "--job", job, "--from", day, "--to", day, timeout=240).stdout
    assert "replaced" in report and "keyed" in report, report
    assert stored() == want and stored(keyed) == want
