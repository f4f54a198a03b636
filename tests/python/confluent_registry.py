"""Drives walcast's schema registry with Confluent's official Python client, end to end.

Run by tests/registry_confluent.rs with the stack's Python (scripts/stack installs
confluent-kafka). Every check is an assertion; the last line printed is a summary the Rust
test reads. Usage: confluent_registry.py REGISTRY_URL BROKERS TOPIC
"""

import sys
import time
from datetime import datetime, timedelta, timezone

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry import topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

registry_url, brokers, topic = sys.argv[1:4]

V1 = """{"type": "record", "name": "UserCreated", "namespace": "users", "fields": [
  {"name": "user_id", "type": "long"},
  {"name": "name", "type": "string"},
  {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}}]}"""
V2 = """{"type": "record", "name": "UserCreated", "namespace": "users", "fields": [
  {"name": "user_id", "type": "long"},
  {"name": "name", "type": "string"},
  {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "email", "type": ["null", "string"], "default": null}]}"""
BREAKING = """{"type": "record", "name": "UserCreated", "namespace": "users", "fields": [
  {"name": "user_id", "type": "int"}]}"""

client = SchemaRegistryClient({"url": registry_url})
subject = f"{topic}-users.UserCreated"

# --- The REST API through SchemaRegistryClient.
v1_id = client.register_schema(subject, Schema(V1, "AVRO"))
assert client.register_schema(subject, Schema(V1, "AVRO")) == v1_id
fetched = client.get_schema(v1_id)
assert fetched.schema_type == "AVRO", fetched.schema_type
assert '"user_id"' in fetched.schema_str
found = client.lookup_schema(subject, Schema(V1, "AVRO"))
assert (found.schema_id, found.version) == (v1_id, 1), found
assert client.test_compatibility(subject, Schema(V2, "AVRO"))
assert not client.test_compatibility(subject, Schema(BREAKING, "AVRO"))
try:
    client.register_schema(subject, Schema(BREAKING, "AVRO"))
    raise AssertionError("an incompatible schema was registered")
except SchemaRegistryError as e:
    assert e.http_status_code == 409 and e.error_code == 409, e
try:
    client.register_schema(subject, Schema('{"type": "recrod"}', "AVRO"))
    raise AssertionError("an invalid schema was registered")
except SchemaRegistryError as e:
    assert e.error_code == 42201, e
try:
    client.get_schema(987654)
    raise AssertionError("an unknown id resolved")
except SchemaRegistryError as e:
    assert e.error_code == 40403, e
v2_id = client.register_schema(subject, Schema(V2, "AVRO"))
assert v2_id != v1_id
latest = client.get_latest_version(subject)
assert (latest.version, latest.schema_id) == (2, v2_id), latest
assert client.get_versions(subject) == [1, 2]
assert subject in client.get_subjects()
client.set_compatibility(subject_name=subject, level="FULL")
assert client.get_compatibility(subject_name=subject) == "FULL"
scratch = f"{topic}-scratch"
client.register_schema(scratch, Schema('"string"', "AVRO"))
assert client.delete_subject(scratch) == [1]
assert client.delete_subject(scratch, permanent=True) == [1]
assert scratch not in client.get_subjects()

# --- Real records through the broker: AvroSerializer writes, AvroDeserializer reads.
admin = AdminClient({"bootstrap.servers": brokers})
for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
    future.result(timeout=30)

serializer = AvroSerializer(
    client,
    V2,
    conf={"auto.register.schemas": False, "use.latest.version": False,
          "subject.name.strategy": topic_record_subject_name_strategy},
)
producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
sent = []
for i in range(20):
    value = {"user_id": i, "name": f"user {i}", "created_at": 1_700_000_000_000_000 + i,
             "email": None if i % 2 else f"u{i}@example.com"}
    payload = serializer(value, SerializationContext(topic, MessageField.VALUE))
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == v2_id, "Confluent framing"
    producer.produce(topic, key=str(i).encode(), value=payload)
    sent.append(value)
assert producer.flush(30) == 0, "undelivered records"

deserializer = AvroDeserializer(client)
consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"{topic}-reader",
                     "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
received = []
deadline = time.monotonic() + 60
while len(received) < len(sent):
    assert time.monotonic() < deadline, f"only {len(received)} of {len(sent)} records arrived"
    message = consumer.poll(0.5)
    if message is None:
        continue
    assert message.error() is None, message.error()
    value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
    # fastavro returns timestamp-micros as a datetime; compare the integer it encodes.
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    value["created_at"] = (value["created_at"] - epoch) // timedelta(microseconds=1)
    received.append(value)
consumer.close()
assert received == sent, (received[:2], sent[:2])

print(f"confluent-kafka {sys.modules['confluent_kafka'].version()[0]}: "
      f"{len(received)} records round-tripped with schema id {v2_id}")
