"""Reads a walcast topic from the beginning with Confluent's official client and prints one
JSON line per record: partition, offset, key and value as AvroDeserializer decodes them
(timestamps as microseconds since the Unix epoch), and the headers. A record without fields
is checked against its registered schema and printed as {}.

Usage: consume_events.py REGISTRY_URL BROKERS TOPIC N
Stops once N distinct events arrived (by their event_id header: redeliveries of an
at-least-once source do not count twice) and the topic stayed quiet for a moment; prints
every record, duplicates included; exits 1 if fewer came.
"""

import json
import sys
import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

registry_url, brokers, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def plain(v):
    if isinstance(v, datetime):
        return (v - EPOCH) // (datetime.resolution)
    raise TypeError(type(v))


# read_committed: only what committed Kafka transactions hold (exactly_once sources).
consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"{topic}-check",
                     "enable.auto.commit": False, "isolation.level": "read_committed"})
partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
registry = SchemaRegistryClient({"url": registry_url})
avro = AvroDeserializer(registry)


def deserialize(data, ctx):
    # confluent-kafka's AvroDeserializer refuses a payload of exactly the 5 framing bytes,
    # which is what a record without fields (a truncate event's value) is. Read it here:
    # its schema id must name a record with no fields.
    if data is not None and len(data) == 5 and data[0] == 0:
        schema = json.loads(registry.get_schema(int.from_bytes(data[1:5], "big")).schema_str)
        if schema.get("type") != "record" or schema.get("fields"):
            raise SystemExit(f"a 5-byte payload whose schema is not an empty record: {schema}")
        return {}
    return avro(data, ctx)
records = []
distinct = set()
deadline = time.monotonic() + 90
quiet_since = None
while time.monotonic() < deadline:
    m = consumer.poll(0.2)
    if m is None:
        if len(distinct) >= n:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.5:
                break
        continue
    quiet_since = None
    if m.error():
        raise SystemExit(f"consuming {topic}: {m.error()}")
    key = deserialize(m.key(), SerializationContext(topic, MessageField.KEY))
    value = deserialize(m.value(), SerializationContext(topic, MessageField.VALUE)) if m.value() else None
    headers = {k: v.decode() for k, v in (m.headers() or [])}
    records.append({"partition": m.partition(), "offset": m.offset(), "key": key, "value": value,
                    "headers": headers})
    distinct.add(headers.get("event_id", (m.partition(), m.offset())))
consumer.close()
for r in records:
    print(json.dumps(r, default=plain))
if len(distinct) < n:
    raise SystemExit(f"only {len(distinct)} of {n} events of {topic} arrived")
