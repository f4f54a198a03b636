//! Shutdown as a value: one [`Trigger`] held by the daemon, any number of [`Shutdown`]s held
//! by its parts. A part waits on it in `select!` (mini-redis's style), and can wait again
//! after a restart, which a one-shot future cannot.

use tokio::sync::watch;

/// Fires the shutdown; dropping it fires it too, so no part outlives its owner.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A part's view of the shutdown: cheap to clone, waits until the [`Trigger`] fires.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and the shutdown it fires.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Self::fire`] was called.
    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

impl Shutdown {
    /// A shutdown that fires when `future` completes.
    pub fn on(future: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (trigger, shutdown) = channel();
        tokio::spawn(async move {
            future.await;
            trigger.fire();
            // Keep the sender alive until every receiver is gone, so none sees a drop.
            trigger.0.closed().await;
        });
        shutdown
    }

    /// A shutdown that fires when `stop` turns true.
    pub fn from_watch(stop: watch::Receiver<bool>) -> Self {
        Shutdown(stop)
    }

    /// Completes once shutdown was asked for (or its trigger dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until shutdown is asked for (or its trigger dropped), or `timeout` passes;
    /// whether it was asked for. A blocking thread waits on it through its runtime's
    /// `Handle::block_on`, so a stop wakes it at once instead of at its next poll.
    pub async fn wait_timeout(&mut self, timeout: std::time::Duration) -> bool {
        tokio::time::timeout(timeout, self.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger_and_can_wait_again() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_triggered());
        trigger.fire();
        a.wait().await;
        b.wait().await;
        b.wait().await;
        assert!(b.is_triggered());
    }

    #[tokio::test]
    async fn a_wait_with_a_timeout_ends_at_the_timeout_or_at_once_on_the_trigger() {
        use std::time::Duration;
        let (trigger, mut a) = channel();
        assert!(!a.wait_timeout(Duration::from_millis(10)).await);
        let waiting = tokio::spawn(async move { a.wait_timeout(Duration::from_secs(3600)).await });
        trigger.fire();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(woken.expect("woken by the trigger, not the hour").unwrap());
    }

    #[tokio::test]
    async fn a_dropped_trigger_stops_the_parts() {
        let (trigger, mut a) = channel();
        drop(trigger);
        a.wait().await;
    }
}
