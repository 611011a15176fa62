//! The loops every registry runs in the background, written once: following
//! a service by asking again and again ([`follow`]), keeping a registration
//! alive by renewing it on a schedule ([`renew`]), logging an outage once
//! ([`OutageLog`]) and publishing only real changes ([`publish`]).
//!
//! A backend that learns about changes by asking (a directory scan, a DNS
//! lookup, an HTTP poll or a blocking query) implements [`Source`] and hands
//! it to [`follow`] with its [`Pace`]; it gets a [`Resolution`] that stops
//! asking when it is dropped.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::types::{AbortOnDrop, Heartbeat, Instance, Resolution};

/// What a resolution says while the registry cannot be reached.
pub(super) const KEEPING: &str = "keeping the last known instances";

/// Where a [`follow`]ed service's instances come from.
pub(super) trait Source: Send + 'static {
    /// Why a fetch failed.
    type Error: fmt::Display + Send;

    /// The service's instances now; `Ok(None)` when the source knows that
    /// nothing changed since its last answer (an HTTP 304, an empty delta),
    /// which spares decoding and comparing.
    fn fetch(&mut self) -> impl Future<Output = Result<Option<Vec<Instance>>, Self::Error>> + Send;
}

/// How often a [`Source`] is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pace {
    /// From the start of one fetch to the start of the next.
    pub(super) every: Duration,
    /// At least this long from the end of one fetch to the start of the
    /// next, however long the fetch took: a source that answers at once
    /// (a blocking query whose index moves, a registry that refuses
    /// connections) is not asked in a tight loop.
    pub(super) floor: Duration,
}

impl Pace {
    /// Every `every`, with the default floor.
    pub(super) fn every(every: Duration) -> Self {
        Pace { every, floor: FLOOR.min(every) }
    }
}

/// The least pause between two fetches unless a backend says otherwise.
const FLOOR: Duration = Duration::from_millis(10);

/// Fetches `service`'s instances from `source` once, then keeps fetching at
/// `pace` in the background and publishes each change. While fetches fail,
/// the last instances are kept and the outage is logged once (as `what`,
/// such as "resolving a.v1.A in local://"), and its end once. The loop stops
/// when the returned resolution is dropped.
///
/// # Errors
///
/// The first fetch's error: a registry unreachable at the start is the
/// caller's to report.
pub(super) async fn follow<S: Source>(
    service: String,
    what: String,
    pace: Pace,
    mut source: S,
) -> Result<Resolution, S::Error> {
    let started = Instant::now();
    let first = source.fetch().await?.unwrap_or_default();
    let (tx, mut rx) = watch::channel(Arc::from(Vec::new()));
    publish(&tx, first);
    // The first answer is the current one, not a change.
    rx.mark_unchanged();
    let heartbeat = Heartbeat::new();
    let beats = heartbeat.clone();
    let task = tokio::spawn(async move {
        let mut outage = OutageLog::new(what);
        let mut started = started;
        loop {
            let next = (started + pace.every).max(Instant::now() + pace.floor);
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            started = Instant::now();
            let fetched = tokio::select! {
                () = tx.closed() => return,
                fetched = source.fetch() => fetched,
            };
            match fetched {
                Ok(instances) => {
                    beats.beat();
                    outage.succeeded();
                    if let Some(instances) = instances {
                        publish(&tx, instances);
                    }
                }
                Err(e) => outage.failed(&e, KEEPING),
            }
        }
    });
    Ok(Resolution::new(service, rx, task).with_heartbeat(heartbeat))
}

/// Runs `renewal` every `every` (the first one `every` after now) until the
/// returned guard is dropped. Failures are logged once per outage, as `what`
/// (such as "renewing a.v1.A in local://"), and retried at the next tick.
pub(super) fn renew<F, Fut, E>(what: String, every: Duration, mut renewal: F) -> AbortOnDrop
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display,
{
    AbortOnDrop(tokio::spawn(async move {
        let mut outage = OutageLog::new(what);
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match renewal().await {
                Ok(()) => outage.succeeded(),
                Err(e) => outage.failed(&e, "retrying"),
            }
        }
    }))
}

/// Logs a registry outage once, and the recovery once.
#[derive(Debug)]
pub(super) struct OutageLog {
    what: String,
    down: bool,
}

impl OutageLog {
    /// For `what`, such as "resolving order.payment.v1.OrderPayment in etcd://...".
    pub(super) fn new(what: impl Into<String>) -> Self {
        OutageLog { what: what.into(), down: false }
    }

    /// Records a failure; logs it if it starts an outage.
    pub(super) fn failed(&mut self, err: &dyn fmt::Display, keeping: &str) {
        if !self.down {
            self.down = true;
            tracing::warn!("registry unreachable while {}: {err}; {keeping}", self.what);
        }
    }

    /// Records a success; logs it if it ends an outage.
    pub(super) fn succeeded(&mut self) {
        if self.down {
            self.down = false;
            tracing::info!("registry reachable again while {}", self.what);
        }
    }
}

/// Publishes `instances` if they differ from the current ones (order-insensitive).
pub(super) fn publish(tx: &watch::Sender<Arc<[Instance]>>, mut instances: Vec<Instance>) {
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    tx.send_if_modified(|current| {
        if current[..] == instances[..] {
            false
        } else {
            *current = Arc::from(std::mem::take(&mut instances));
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::registry::types::{Endpoint, Metadata};

    /// Answers from a script, then the last answer forever; counts fetches.
    struct Script {
        answers: VecDeque<Result<Option<Vec<Instance>>, String>>,
        fetches: Arc<AtomicUsize>,
        _alive: Arc<()>,
    }

    impl Source for Script {
        type Error = String;

        async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.answers.len() > 1 { self.answers.pop_front().unwrap() } else { self.answers[0].clone() }
        }
    }

    fn instances(ports: &[u16]) -> Option<Vec<Instance>> {
        let one = |port| Instance {
            id: format!("i{port}"),
            service: "a.A".to_owned(),
            endpoint: Endpoint::new("127.0.0.1", port),
            metadata: Metadata::default(),
        };
        Some(ports.iter().copied().map(one).collect())
    }

    /// Collects what is logged on this thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn count(&self, needle: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_changes_keeps_instances_through_an_outage_logged_once_and_stops_when_dropped() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _logging = tracing::subscriber::set_default(subscriber);

        let (fetches, alive) = (Arc::new(AtomicUsize::new(0)), Arc::new(()));
        let script = Script {
            answers: VecDeque::from([
                Ok(instances(&[1])),
                Ok(instances(&[1])),
                Ok(None),
                Ok(instances(&[1, 2])),
                Err("refused".to_owned()),
                Err("refused".to_owned()),
                Err("refused".to_owned()),
                Ok(instances(&[2])),
            ]),
            fetches: fetches.clone(),
            _alive: alive.clone(),
        };
        let pace = Pace { every: Duration::from_millis(100), floor: Duration::from_millis(10) };
        let mut resolution =
            follow("a.A".to_owned(), "resolving a.A in test://".to_owned(), pace, script).await.unwrap();
        assert_eq!(resolution.current().len(), 1, "the first answer is loaded eagerly");

        // Two unchanged answers publish nothing: the next change is [1, 2].
        let next = resolution.changed().await.unwrap();
        assert_eq!(next.iter().map(|i| i.endpoint.port()).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
        // Three failures keep [1, 2] and log one outage; the recovery publishes [2].
        let next = resolution.changed().await.unwrap();
        assert_eq!(next.iter().map(|i| i.endpoint.port()).collect::<Vec<_>>(), [2]);
        assert_eq!(fetches.load(Ordering::SeqCst), 8);
        assert_eq!(logs.count("registry unreachable while resolving a.A in test://: refused"), 1);
        assert_eq!(logs.count("registry reachable again while resolving a.A in test://"), 1);

        drop(resolution);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(Arc::strong_count(&alive), 1, "the loop and its source are gone");
    }

    /// A source that answers after `delay`, like a blocking query.
    struct Slow {
        delay: Duration,
        fetches: Arc<AtomicUsize>,
    }

    impl Source for Slow {
        type Error = String;

        async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_spaces_fetches_that_answer_at_once_or_late() {
        for (delay, pace, expected) in [
            // Answers at once: one fetch per `every`, the first at once.
            (Duration::ZERO, Pace::every(Duration::from_millis(100)), 11),
            // A blocking query with no `every`: one fetch per delay + floor.
            (Duration::from_millis(40), Pace { every: Duration::ZERO, floor: Duration::from_millis(60) }, 11),
        ] {
            let fetches = Arc::new(AtomicUsize::new(0));
            let source = Slow { delay, fetches: fetches.clone() };
            let resolution = follow("a.A".to_owned(), "test".to_owned(), pace, source).await.unwrap();
            let begun = Instant::now();
            tokio::time::sleep(Duration::from_millis(1000) - begun.elapsed() + Duration::from_millis(1))
                .await;
            assert_eq!(fetches.load(Ordering::SeqCst), expected, "{delay:?} {pace:?}");
            drop(resolution);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_run_on_schedule_until_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let guard = renew("renewing".to_owned(), Duration::from_millis(100), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        drop(guard);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }
}
