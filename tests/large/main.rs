//! A million-row transaction through the source in bounded memory.
//!
//! A test binary of its own: the peak RSS it measures is the whole process's, so no other
//! test may run beside it, and its long transaction would hold up every logical slot
//! created on the cluster meanwhile (slot creation waits for running transactions).

#[path = "../support/mod.rs"]
mod support;

mod transaction;
