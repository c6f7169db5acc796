//! One signal every task listens to. Owns nothing but the signal.

use tokio::sync::watch;

/// The sending side: fire once to tell every task to stop.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// The listening side, cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, unfired signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every listener to stop. Idempotent.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal fires (at once if it already has, or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}
