//! The work queue behind both coalescers: per key at most one job in flight and one pending,
//! a key that keeps changing is run at most once per pacing interval, and keys that arrive
//! together run together. Also the [`Ledger`] that lets encounters wait for row messages.
//!
//! Owns no I/O: [`drive`] runs a caller's batches on spawned tasks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

/// Pending work by key, in arrival order, and the keys in flight or cooling down.
#[derive(Debug)]
pub(super) struct Queue<K, W> {
    pending: HashMap<K, W>,
    order: VecDeque<K>,
    in_flight: HashSet<K>,
    /// Keys that changed again while in flight, and when they may run again.
    not_before: HashMap<K, Instant>,
}

impl<K, W> Default for Queue<K, W> {
    fn default() -> Self {
        Queue {
            pending: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashSet::new(),
            not_before: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, W: Default> Queue<K, W> {
    /// The pending work of `key`, made (at the back of the line) if there was none, and
    /// whether it was made now.
    pub(super) fn entry(&mut self, key: K) -> (&mut W, bool) {
        let made = !self.pending.contains_key(&key);
        if made {
            self.order.push_back(key);
        }
        (self.pending.entry(key).or_default(), made)
    }

    /// Takes up to `max` keys, in line order, that are neither in flight nor cooling and whose
    /// work `ready` accepts, all in the `group` of the first such key; they are in flight until
    /// [`Queue::done`]. With nothing to take, `Err` holds when the next cooling key is due.
    pub(super) fn take<G: PartialEq>(
        &mut self,
        max: usize,
        group: impl Fn(&K) -> G,
        ready: impl Fn(&W) -> bool,
    ) -> Result<Vec<(K, W)>, Option<Instant>> {
        let now = Instant::now();
        let Queue {
            pending,
            order,
            in_flight,
            not_before,
        } = self;
        not_before.retain(|_, t| *t > now);
        let free = |k: &K| {
            !in_flight.contains(k)
                && !not_before.contains_key(k)
                && pending.get(k).is_some_and(&ready)
        };
        let Some(first) = order.iter().find(|k| free(k)).map(&group) else {
            return Err(not_before.values().min().copied());
        };
        let mut taken: Vec<K> = Vec::new();
        order.retain(|key| {
            if taken.len() >= max || group(key) != first || !free(key) {
                return true;
            }
            taken.push(*key);
            false
        });
        in_flight.extend(taken.iter().copied());
        Ok(taken
            .into_iter()
            .filter_map(|k| pending.remove(&k).map(|w| (k, w)))
            .collect())
    }

    /// Ends the run of `keys`; those that changed meanwhile wait `pace` before their next run.
    pub(super) fn done(&mut self, keys: impl IntoIterator<Item = K>, pace: Duration) {
        let later = Instant::now() + pace;
        for key in keys {
            self.in_flight.remove(&key);
            if self.pending.contains_key(&key) {
                self.not_before.insert(key, later);
            }
        }
    }

    /// Keys waiting or running.
    pub(super) fn len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }
}

/// Runs batches until the semaphore closes: waits for `wake` (or the next cooling key), then
/// starts `process` on every batch `take` yields, at most `parallel` at a time.
pub(super) async fn drive<B, F>(
    wake: &Notify,
    parallel: usize,
    mut take: impl FnMut() -> Result<B, Option<Instant>>,
    process: impl Fn(B) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut cooling: Option<Instant> = None;
    loop {
        match cooling {
            Some(at) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => wake.notified().await,
        }
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            match take() {
                Ok(batch) => {
                    let run = process(batch);
                    tokio::spawn(async move {
                        run.await;
                        drop(permit);
                    });
                }
                Err(next) => {
                    cooling = next;
                    break;
                }
            }
        }
    }
}

/// The earlier of two optional write times (µs since the epoch): what folded work keeps.
pub(super) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Which row work is still owed messages, by the mark of the push that made it.
///
/// Every push of row changes gets the next mark; the work it makes stays open until its
/// messages are sent. An encounter made from the same notifications waits until no work at
/// or before its mark is open, so it follows that commit's `{"character":…}` messages.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
    /// Woken whenever work closes.
    closed: Notify,
}

#[derive(Debug, Default)]
struct LedgerInner {
    last: u64,
    open: BTreeMap<u64, usize>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new mark, later than every mark before it.
    pub(super) fn next(&self) -> u64 {
        let mut l = self.lock();
        l.last += 1;
        l.last
    }

    /// The latest mark handed out.
    pub(super) fn last(&self) -> u64 {
        self.lock().last
    }

    /// One more piece of work made at `mark`.
    pub(super) fn open(&self, mark: u64) {
        *self.lock().open.entry(mark).or_default() += 1;
    }

    /// A piece of work made at `mark` has sent its messages.
    pub(super) fn close(&self, mark: u64) {
        let mut l = self.lock();
        if let Some(n) = l.open.get_mut(&mark) {
            *n -= 1;
            if *n == 0 {
                l.open.remove(&mark);
            }
        }
        drop(l);
        self.closed.notify_waiters();
    }

    /// Resolves once every piece of work made at or before `mark` has sent its messages.
    pub(super) async fn settle(&self, mark: u64) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two is not missed.
            closed.as_mut().enable();
            if self.settled(mark) {
                return;
            }
            closed.await;
        }
    }

    /// Whether every piece of work made at or before `mark` has sent its messages.
    pub(super) fn settled(&self, mark: u64) -> bool {
        self.lock()
            .open
            .keys()
            .next()
            .is_none_or(|first| *first > mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_flight_one_pending_and_pacing() {
        let mut q: Queue<u32, u32> = Queue::default();
        *q.entry(1).0 += 1;
        *q.entry(2).0 += 1;
        assert!(!q.entry(1).1, "a second change folds into the pending work");
        let batch = q.take(10, |_| (), |_| true).unwrap();
        assert_eq!(batch, vec![(1, 1), (2, 1)]);
        *q.entry(1).0 += 5;
        assert!(q.take(10, |_| (), |_| true).is_err(), "1 is in flight");
        q.done([1, 2], Duration::from_millis(50));
        match q.take(10, |_| (), |_| true) {
            Err(Some(at)) => assert!(at > Instant::now()),
            other => panic!("1 changed while in flight: it cools down, got {other:?}"),
        }
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn groups_and_readiness() {
        let mut q: Queue<(char, u32), bool> = Queue::default();
        *q.entry(('a', 1)).0 = false;
        *q.entry(('b', 1)).0 = true;
        *q.entry(('a', 2)).0 = true;
        let batch = q.take(10, |k| k.0, |ready| *ready).unwrap();
        assert_eq!(
            batch,
            vec![(('b', 1), true)],
            "first ready key sets the group"
        );
        let batch = q.take(10, |k| k.0, |ready| *ready).unwrap();
        assert_eq!(batch, vec![(('a', 2), true)]);
        assert_eq!(q.take(10, |k| k.0, |ready| *ready), Err(None));
    }

    #[test]
    fn ledger_settles_in_mark_order() {
        let l = Ledger::default();
        let a = l.next();
        l.open(a);
        let b = l.next();
        l.open(b);
        assert!(!l.settled(a));
        l.close(b);
        assert!(!l.settled(b), "a is older and still open");
        l.close(a);
        assert!(l.settled(b));
        assert_eq!(l.last(), b);
    }
}
