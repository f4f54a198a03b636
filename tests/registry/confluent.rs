//! Spec: Confluent's official Python client (confluent-kafka, from PyPI) uses walcast's
//! registry as it would Confluent's: SchemaRegistryClient for the REST API, and
//! AvroSerializer / AvroDeserializer producing and consuming real records through the broker.

use crate::support::registry::Registry;
use crate::support::{unique, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn confluents_python_client_registers_produces_and_consumes() {
    let stack = Stack::get();
    let registry = Registry::start(stack).await;
    let topic = unique("py_avro");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/confluent_registry.py"
    );
    let out = tokio::process::Command::new(&stack.python)
        .args([script, &registry.url, &stack.kafka_brokers, &topic])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}; run `scripts/stack up`", stack.python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("20 records round-tripped"),
        "unexpected summary: {stdout}"
    );
}
