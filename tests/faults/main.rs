//! The fault matrix: a TCP proxy between walcast and one server at a time (PostgreSQL, both
//! of the source's connections; Apache Kafka; the schema registry; a Redis replica), brings a
//! fault mid-stream while writes run, holds it, then heals. Every cell asserts that nothing
//! is lost (each written change arrives, a redelivery repeating its event id), that every
//! part recovers by itself and the daemon never exits, and, where Kafka cannot take writes,
//! that the slot is never confirmed past what Kafka holds.
//!
//! Cells run side by side (`scripts/test` gives this binary many test threads): most of a
//! cell's time is the fault's hold.

#[path = "../support/mod.rs"]
mod support;

mod matrix;
