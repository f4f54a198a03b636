//! Security against real servers with TLS and authentication turned on: Kafka over SASL_SSL
//! and mTLS, the registry over HTTPS with basic auth and client certificates, and every sink
//! store over TLS; wrong passwords and untrusted certificates give named, permanent errors,
//! and no secret is ever printed.

#[path = "../support/mod.rs"]
mod support;

mod services;
mod sinks;
