//! The acknowledged-LSN watermark: which source position Kafka has made safe to confirm.
//!
//! A transaction's `end_lsn` counts as acknowledged only when every event it produced, and
//! every event of every earlier transaction, has been acknowledged by the broker. Deliveries
//! complete out of order across partitions, so each open transaction counts its outstanding
//! events and the watermark advances over the prefix of transactions that are complete.
//!
//! After a source reconnect a transaction may be left without a commit: it will be sent
//! again, so it is *void*: it never advances the watermark, and leaves the queue once its
//! own deliveries are done. A failed delivery freezes the watermark for good: nothing after
//! it may ever be confirmed, and the pipeline stops.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// A transaction's number, carried by each of its records as the delivery opaque.
pub type TxNo = usize;

#[derive(Debug)]
struct Tx {
    outstanding: u64,
    end: Option<Lsn>,
    void: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Number of `txs[0]`.
    base: TxNo,
    txs: VecDeque<Tx>,
    acked: Lsn,
    failed: Option<String>,
}

impl Watermark {
    /// A transaction begins; returns its number.
    pub fn begin(&mut self) -> TxNo {
        if let Some(last) = self.txs.back_mut() {
            if last.end.is_none() {
                last.void = true;
            }
        }
        self.txs.push_back(Tx {
            outstanding: 0,
            end: None,
            void: false,
        });
        self.base + self.txs.len() - 1
    }

    /// One more event of transaction `tx` is on its way (call before sending it).
    pub fn sent(&mut self, tx: TxNo) {
        if let Some(t) = self.txs.get_mut(tx - self.base) {
            t.outstanding += 1;
        }
    }

    /// The transaction has committed at `end`; returns the new watermark if it moved.
    pub fn commit(&mut self, tx: TxNo, end: Lsn) -> Option<Lsn> {
        if let Some(t) = self.txs.get_mut(tx - self.base) {
            t.end = Some(end);
        }
        self.advance()
    }

    /// The broker acknowledged one event of `tx`, or failed it with `error`.
    pub fn delivered(&mut self, tx: TxNo, error: Option<String>) -> Option<Lsn> {
        if let Some(e) = error {
            self.failed.get_or_insert(e);
            return None;
        }
        if let Some(t) = tx.checked_sub(self.base).and_then(|i| self.txs.get_mut(i)) {
            t.outstanding = t.outstanding.saturating_sub(1);
        }
        self.advance()
    }

    fn advance(&mut self) -> Option<Lsn> {
        if self.failed.is_some() {
            return None;
        }
        let before = self.acked;
        while let Some(front) = self.txs.front() {
            if front.outstanding > 0 || (front.end.is_none() && !front.void) {
                break;
            }
            if let (Some(end), false) = (front.end, front.void) {
                self.acked = self.acked.max(end);
            }
            self.txs.pop_front();
            self.base += 1;
        }
        (self.acked > before).then_some(self.acked)
    }

    /// The highest `end_lsn` up to which every event has been acknowledged; [`Lsn::ZERO`]
    /// until the first transaction completes.
    pub fn acked(&self) -> Lsn {
        self.acked
    }

    /// The first delivery failure, if any: the watermark is frozen.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Events sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.txs.iter().map(|t| t.outstanding).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_acked_when_it_and_all_before_it_are() {
        let mut w = Watermark::default();
        let a = w.begin();
        w.sent(a);
        w.sent(a);
        assert_eq!(w.commit(a, Lsn(10)), None);
        let b = w.begin();
        w.sent(b);
        assert_eq!(w.commit(b, Lsn(20)), None);
        // b's only event lands first: nothing moves until a is complete.
        assert_eq!(w.delivered(b, None), None);
        assert_eq!(w.delivered(a, None), None);
        assert_eq!(w.delivered(a, None), Some(Lsn(20)));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn a_transaction_without_events_is_acked_on_commit() {
        let mut w = Watermark::default();
        let a = w.begin();
        assert_eq!(w.commit(a, Lsn(5)), Some(Lsn(5)));
    }

    #[test]
    fn a_void_transaction_never_advances_the_watermark() {
        let mut w = Watermark::default();
        let a = w.begin();
        w.sent(a);
        let b = w.begin(); // reconnect: a never committed
        w.sent(b);
        w.commit(b, Lsn(30));
        assert_eq!(w.delivered(b, None), None, "a is still in flight");
        assert_eq!(w.delivered(a, None), Some(Lsn(30)));
    }

    #[test]
    fn a_failed_delivery_freezes_the_watermark() {
        let mut w = Watermark::default();
        let a = w.begin();
        w.sent(a);
        w.sent(a);
        w.commit(a, Lsn(10));
        w.delivered(a, Some("broker said no".into()));
        assert_eq!(w.delivered(a, None), None);
        let b = w.begin();
        assert_eq!(w.commit(b, Lsn(20)), None);
        assert_eq!(w.acked(), Lsn(0));
        assert_eq!(w.failure(), Some("broker said no"));
    }
}
