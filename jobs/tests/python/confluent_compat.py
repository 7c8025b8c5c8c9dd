"""Confluent's own Python client (confluent-kafka 2.16) against this project's
schema registry and the local broker. Run by jobs/tests/it/python_client.rs.

  produce: registers the envelope through AvroSerializer (auto-register), produces
           events to <prefix>events.raw keyed by user_id, exercises the registry
           client (lookup, versions, compatibility, config, error codes).
  consume: reads <prefix>events.valid with AvroDeserializer and prints the event ids.
Prints one JSON object on stdout; exits non-zero on any failure.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def expect_error(code, fn):
    try:
        fn()
    except SchemaRegistryError as e:
        assert e.error_code == code, f"expected error_code {code}, got {e.error_code}: {e}"
        return
    raise AssertionError(f"expected SchemaRegistryError {code}")


def produce(args):
    bootstrap, registry, prefix, envelope_path, count = args[0], args[1], args[2], args[3], int(args[4])
    sr = SchemaRegistryClient({"url": registry})
    envelope = open(envelope_path).read()
    topic = f"{prefix}events.raw"
    serializer = AvroSerializer(sr, envelope)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    now = int(time.time() * 1000)
    ids = []
    for i in range(count):
        event = {
            "event_id": f"{prefix}py-{i}",
            "user_id": f"py-user-{i % 7}",
            "event_type": "transaction.purchase_complete",
            "timestamp": now - i,
            "session_id": f"py-sess-{i % 3}",
            "event_properties": json.dumps({"order_id": f"o-{i}", "amount": 10.5 + i, "currency": "EUR"}),
            "device_info": {"device_type": "mobile", "os": "Android", "os_version": None, "browser": None, "app_version": "3.1"},
            "location": None,
            "referrer": None,
        }
        value = serializer(event, SerializationContext(topic, MessageField.VALUE))
        assert value[0] == 0, "Confluent magic byte"
        producer.produce(topic, key=event["user_id"].encode(), value=value)
        ids.append(event["event_id"])
    assert producer.flush(30) == 0, "all delivered"

    subject = f"{topic}-value"
    assert subject in sr.get_subjects(), "auto-registered under TopicNameStrategy"
    latest = sr.get_latest_version(subject)
    assert latest.version >= 1 and latest.schema_id > 0
    found = sr.lookup_schema(subject, Schema(envelope, "AVRO"))
    assert found.schema_id == latest.schema_id
    assert sr.get_versions(subject) == [latest.version]
    assert sr.get_schema(latest.schema_id).schema_str
    # A new required field breaks BACKWARD compatibility.
    broken = json.loads(envelope)
    broken["fields"].append({"name": "tenant", "type": "string"})
    assert sr.test_compatibility(subject, Schema(json.dumps(broken), "AVRO")) is False
    expect_error(409, lambda: sr.register_schema(subject, Schema(json.dumps(broken), "AVRO")))
    # With a default it is compatible.
    ok = json.loads(envelope)
    ok["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
    assert sr.test_compatibility(subject, Schema(json.dumps(ok), "AVRO")) is True
    assert sr.get_compatibility() == "BACKWARD"
    sr.set_compatibility(subject_name=subject, level="FULL")
    assert sr.get_compatibility(subject) == "FULL"
    expect_error(40403, lambda: sr.get_schema(2_000_000_000))
    expect_error(40401, lambda: sr.get_latest_version(f"{prefix}no-such-subject"))
    expect_error(42201, lambda: sr.register_schema(f"{prefix}bad-value", Schema('{"type": "nope"}', "AVRO")))
    print(json.dumps({"produced": ids, "schema_id": latest.schema_id}))


def consume(args):
    bootstrap, registry, prefix, expected = args[0], args[1], args[2], int(args[3])
    sr = SchemaRegistryClient({"url": registry})
    deserializer = AvroDeserializer(sr)
    topic = f"{prefix}events.valid"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}py-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    seen = {}
    deadline = time.time() + 60
    while len(seen) < expected and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        event = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
        assert msg.key().decode() == event["user_id"], "keyed by user_id"
        assert json.loads(event["event_properties"])["currency"] == "EUR"
        seen[event["event_id"]] = event["event_type"]
    consumer.close()
    print(json.dumps({"consumed": sorted(seen)}))


if __name__ == "__main__":
    {"produce": produce, "consume": consume}[sys.argv[1]](sys.argv[2:])
