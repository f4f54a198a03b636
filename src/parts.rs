//! The daemon's parts and their states: a leaf that the pipelines, the sinks, the admin
//! endpoint and the metrics all report to or read from, so none of them imports the daemon.
//!
//! # What "running" means
//! A part is [`PartState::Running`] only while it does its work: a source once it streams
//! from its slot (after `START_REPLICATION` is answered), a sink once it holds its share of
//! the topics' partitions. Until then it is [`PartState::Starting`]. `/readyz` answers 200
//! only when every part runs, so a deploy script that waits for readiness and then writes
//! never writes before the slot exists (under `snapshot = "never"` such a write would be
//! lost to the stream). A part retrying a transient error is [`PartState::Waiting`], with
//! the reason, until it runs again.

use std::sync::{Arc, Mutex};

/// What a part is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartState {
    /// Started, not yet doing its work: a source not yet streaming from its slot, a sink
    /// without its partitions yet.
    Starting,
    /// Doing its work: a source streams from its slot, a sink holds its partitions.
    Running,
    /// Retrying a transient error (an unreachable server, a stalled connection); the text
    /// says what it waits for. It runs again by itself once the error clears.
    Waiting(String),
    /// A source waiting while another instance streams from its slot; it takes over when
    /// the slot is released.
    Standby,
    /// Stopped cleanly (on shutdown).
    Stopped,
    /// Stopped by a permanent error, or a panic: the message says which.
    Failed(String),
}

impl PartState {
    /// The state's name in `/readyz` and `walcast status`, and its reason if it has one.
    pub fn describe(&self) -> (&'static str, Option<&str>) {
        match self {
            PartState::Starting => ("starting", None),
            PartState::Running => ("running", None),
            PartState::Waiting(why) => ("waiting", Some(why)),
            PartState::Standby => ("standby", None),
            PartState::Stopped => ("stopped", None),
            PartState::Failed(why) => ("failed", Some(why)),
        }
    }

    /// Whether the part still lives (it has neither stopped nor failed).
    pub fn is_alive(&self) -> bool {
        !matches!(self, PartState::Stopped | PartState::Failed(_))
    }
}

/// Every part's state, by name (`source users`, `sink orders-cache`, `registry`), in the
/// order the configuration lists them. Cheap to clone; shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct Parts(Arc<Mutex<Vec<(String, PartState)>>>);

impl Parts {
    /// Every part and its state, in configuration order.
    pub fn snapshot(&self) -> Vec<(String, PartState)> {
        self.0.lock().expect("parts lock").clone()
    }

    pub(crate) fn set(&self, part: &str, state: PartState) {
        let mut parts = self.0.lock().expect("parts lock");
        match parts.iter_mut().find(|(name, _)| name == part) {
            Some((_, s)) => *s = state,
            None => parts.push((part.to_string(), state)),
        }
    }

    /// Whether any part still lives (starting, running, waiting or standby).
    pub fn any_alive(&self) -> bool {
        self.snapshot().iter().any(|(_, state)| state.is_alive())
    }

    /// A handle for the part `name`, to report its state while it runs.
    pub fn handle(&self, name: &str) -> PartHandle {
        PartHandle {
            parts: self.clone(),
            name: name.to_string(),
        }
    }
}

/// One part's way to report what it is doing, while it runs. The default handle reports to
/// nobody (for a part run outside the daemon, e.g. by a test or `walcast snapshot`).
#[derive(Debug, Clone, Default)]
pub struct PartHandle {
    parts: Parts,
    name: String,
}

impl PartHandle {
    /// Sets this part's state (starting, running, waiting or standby; the daemon sets
    /// stopped and failed).
    pub fn set(&self, state: PartState) {
        if !self.name.is_empty() {
            self.parts.set(&self.name, state);
        }
    }

    /// This part waits out a transient error: `why` names it and when the next try is.
    pub fn waiting(&self, why: impl std::fmt::Display) {
        self.set(PartState::Waiting(why.to_string()));
    }

    /// The part's current state (`Starting` for a handle that reports to nobody).
    pub fn state(&self) -> PartState {
        self.parts
            .snapshot()
            .into_iter()
            .find(|(name, _)| *name == self.name)
            .map_or(PartState::Starting, |(_, state)| state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_lives_until_it_stops_or_fails() {
        let parts = Parts::default();
        let source = parts.handle("source users");
        source.set(PartState::Starting);
        assert!(parts.any_alive());
        source.waiting("PostgreSQL unreachable; retrying in 2s");
        assert_eq!(
            parts.snapshot()[0].1.describe(),
            ("waiting", Some("PostgreSQL unreachable; retrying in 2s"))
        );
        assert!(parts.any_alive());
        parts.set("source users", PartState::Failed("slot gone".into()));
        assert!(!parts.any_alive());
    }

    #[test]
    fn a_handle_of_nobody_reports_nothing() {
        let handle = PartHandle::default();
        handle.set(PartState::Running);
        assert_eq!(handle.state(), PartState::Starting);
    }
}
