//! Lanes: one batch written over `parallelism` connections to the store.
//!
//! # Guarantees
//! - **Order per key.** Each key's changes go to the lane its hash picks, so they stay in
//!   order on one connection; different keys are written concurrently.
//! - **Positions last.** The batch's positions are written through the first lane only
//!   once every lane's write is durable; with one lane, rows and positions share one write
//!   (one transaction, or one script). A crash in between leaves older positions beside
//!   newer rows: the redelivery that follows is absorbed by the versions.
//! - **Truncates first.** A batch's truncates are written through the first lane before
//!   any lane writes its changes, which then meet the raised floor.
//!
//! The lanes are polled concurrently on the calling task ([`connectors::join_all`]): no task is spawned
//! per batch, and the connections stay owned by the runner.

use connectors::{Batch, Change, Op, Sink};

/// Applies `batch` over the lanes: each key's changes go to the lane its hash picks, so they
/// stay in order on one connection; lanes write concurrently; the positions are written
/// last, through the first lane, once every lane's write is durable. A crash in between
/// leaves older positions beside newer rows: the redelivery that follows is absorbed by the
/// versions. With one lane, rows and positions share one transaction.
pub async fn apply_over<S: Sink>(lanes: &mut [S], batch: &Batch) -> Result<(), connectors::Error> {
    if lanes.len() == 1 {
        return lanes[0].apply(batch).await;
    }
    let (truncates, changes): (Vec<&Change>, Vec<&Change>) = batch
        .changes
        .iter()
        .partition(|c| matches!(c.op, Op::Truncate));
    if !truncates.is_empty() {
        let truncates = Batch {
            changes: truncates.into_iter().cloned().collect(),
            positions: Vec::new(),
        };
        lanes[0].apply(&truncates).await?;
    }
    let mut parts: Vec<Batch> = lanes.iter().map(|_| Batch::default()).collect();
    for change in changes {
        let lane = (connectors::table::key_hash(&change.key) % lanes.len() as u64) as usize;
        parts[lane].changes.push(change.clone());
    }
    let writes = lanes
        .iter_mut()
        .zip(&parts)
        .filter(|(_, part)| !part.changes.is_empty())
        .map(|(lane, part)| lane.apply(part))
        .collect();
    for result in connectors::join_all(writes).await {
        result?;
    }
    if batch.positions.is_empty() {
        return Ok(());
    }
    let positions = Batch {
        changes: Vec::new(),
        positions: batch.positions.clone(),
    };
    lanes[0].apply(&positions).await
}
