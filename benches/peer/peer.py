"""The Python peer: the validate + per-user aggregate work of our pipeline,
written the way a Python team would, with confluent-kafka (librdkafka) and
fastavro. It reads the same Confluent-framed Avro topic as the benchmark's Rust
stages and keeps its per-user aggregates in memory (no PostgreSQL, no
ClickHouse, no output topic), so it does less than our pipeline does.

    python peer.py BOOTSTRAP TOPIC COUNT SCHEMAS_DIR

Reads COUNT records from the beginning of every partition of TOPIC, then prints
one JSON line: elapsed seconds (first record to last), valid, invalid, users.
"""

import io
import json
import os
import re
import struct
import sys
import time

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro.validation import validate as avro_validate

EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
MAX_ID_LEN = 128
MAX_FUTURE_MS = 300 * 1000
MAX_AGE_MS = 365 * 86_400 * 1000
SESSION_GAP_MS = 30 * 60 * 1000


def load(path):
    with open(path) as f:
        return fastavro.parse_schema(json.load(f))


def validate(value, envelope, properties, now_ms):
    """Returns (event, None) or (None, reason)."""
    if len(value) < 5 or value[0] != 0:
        return None, "not_avro"
    struct.unpack(">I", value[1:5])  # the schema id; one envelope here
    try:
        event = fastavro.schemaless_reader(io.BytesIO(value[5:]), envelope)
    except Exception:  # noqa: BLE001 - any decode failure is a rejection
        return None, "avro_decode_error"
    for field in ("event_id", "user_id", "session_id"):
        v = event[field]
        if not v or len(v) > MAX_ID_LEN:
            return None, "missing_required_field"
    event_type = event["event_type"]
    if not EVENT_TYPE.match(event_type):
        return None, "invalid_event_type"
    schema = properties.get(event_type)
    if schema is None:
        return None, "unknown_event_type"
    ts = event["timestamp"]
    ts_ms = int(ts.timestamp() * 1000) if hasattr(ts, "timestamp") else ts
    if ts_ms > now_ms + MAX_FUTURE_MS or ts_ms < now_ms - MAX_AGE_MS:
        return None, "timestamp_out_of_range"
    try:
        props = json.loads(event["event_properties"] or "{}")
    except ValueError:
        return None, "invalid_properties"
    if not isinstance(props, dict) or not avro_validate(props, schema, raise_errors=False):
        return None, "invalid_properties"
    event["timestamp"] = ts_ms
    event["event_properties"] = props
    return event, None


def aggregate(users, event):
    """Per-user profile: counts, sessions, revenue, engagement and lifecycle stage."""
    u = users.get(event["user_id"])
    ts = event["timestamp"]
    if u is None:
        u = users[event["user_id"]] = {
            "events": 0, "sessions": 0, "first_seen": ts, "last_seen": 0, "revenue": 0.0,
            "purchases": 0, "shares": 0, "types": {}, "stage": "acquisition", "score": 0.0,
        }
    if ts - u["last_seen"] > SESSION_GAP_MS:
        u["sessions"] += 1
    u["events"] += 1
    u["first_seen"] = min(u["first_seen"], ts)
    u["last_seen"] = max(u["last_seen"], ts)
    kind = event["event_type"]
    u["types"][kind] = u["types"].get(kind, 0) + 1
    props = event["event_properties"]
    if kind == "transaction.purchase_complete":
        u["revenue"] += float(props.get("amount", 0))
        u["purchases"] += 1
    elif kind == "transaction.refund":
        u["revenue"] -= float(props.get("amount", 0))
    elif kind == "engagement.share":
        u["shares"] += 1
    frequency = min(u["events"] / 50.0, 1.0)
    depth = min(len(u["types"]) / 8.0, 1.0)
    u["score"] = round(100 * (0.4 + 0.3 * frequency + 0.3 * depth), 2)
    if u["shares"] > 0 and u["purchases"] > 0:
        u["stage"] = "referral"
    elif u["purchases"] > 0:
        u["stage"] = "revenue"
    elif u["sessions"] > 1:
        u["stage"] = "retention"
    elif u["events"] >= 3:
        u["stage"] = "activation"


def main():
    bootstrap, topic, count, schemas = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    envelope = load(os.path.join(schemas, "envelope.avsc"))
    events_dir = os.path.join(schemas, "events")
    properties = {f[: -len(".avsc")]: load(os.path.join(events_dir, f)) for f in os.listdir(events_dir)}
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "bench-python-peer",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    users, seen, valid, first = {}, 0, 0, None
    now_ms = int(time.time() * 1000)
    deadline = time.monotonic() + 3600
    while seen < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            if msg.error():
                continue
            if first is None:
                first = time.perf_counter()
            seen += 1
            event, _reason = validate(msg.value(), envelope, properties, now_ms)
            if event is not None:
                valid += 1
                aggregate(users, event)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    print(json.dumps({"elapsed_s": elapsed, "seen": seen, "valid": valid, "invalid": seen - valid, "users": len(users)}))
    return 0 if seen >= count else 1


if __name__ == "__main__":
    sys.exit(main())
