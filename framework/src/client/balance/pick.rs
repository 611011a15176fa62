//! Choosing an endpoint for each attempt.
//!
//! Candidates are the endpoints whose server says it is serving, that are
//! not ejected, and that this call has not tried yet. When more than half
//! of the serving endpoints are ejected (the panic threshold), ejection is
//! ignored: a fleet that looks mostly broken is more likely a shared
//! problem, and refusing every call would only make it worse. An ejected
//! endpoint whose ejection period is over gets the next call as its probe,
//! one call at a time. Among the candidates the strategy picks:
//!
//! - [`Balance::PeakEwma`] (default): power of two choices, the lower of
//!   latency estimate x (calls in flight + 1);
//! - [`Balance::RoundRobin`]: each in turn;
//! - [`Balance::ConsistentHash`]: rendezvous hashing on the call's
//!   [`HashKey`](crate::client::HashKey), so a key keeps its endpoint while
//!   the set of endpoints changes around it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use super::Balance;
use super::hash::rendezvous;
use crate::client::breaker::Admit;
use crate::client::endpoint::{EndpointService, EndpointState};
use crate::registry::AbortOnDrop;

/// One endpoint in the balancer: what is known of it, and the service that
/// sends attempts there.
#[derive(Debug)]
pub(crate) struct Member<S> {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) service: EndpointService<S>,
    /// Follows the endpoint's active health while it is a member.
    pub(crate) _health: Option<AbortOnDrop>,
}

impl<S> std::ops::Deref for Member<S> {
    type Target = EndpointState;

    fn deref(&self) -> &EndpointState {
        &self.state
    }
}

/// The endpoint chosen for an attempt.
#[derive(Debug)]
pub(crate) struct Pick<S> {
    pub(crate) member: Arc<Member<S>>,
    /// Whether the attempt is the probe of an ejected endpoint.
    pub(crate) probe: bool,
}

/// The endpoints of a channel.
#[derive(Debug)]
pub(crate) struct Endpoints<S> {
    list: Mutex<Arc<[Arc<Member<S>>]>>,
    next: AtomicUsize,
}

impl<S> Default for Endpoints<S> {
    fn default() -> Self {
        Endpoints { list: Mutex::new(Arc::from(Vec::new())), next: AtomicUsize::new(0) }
    }
}

impl<S> Endpoints<S> {
    /// The endpoints now.
    pub(crate) fn snapshot(&self) -> Arc<[Arc<Member<S>>]> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the endpoints.
    pub(crate) fn replace(&self, list: Vec<Arc<Member<S>>>) {
        *self.list.lock().unwrap_or_else(PoisonError::into_inner) = Arc::from(list);
    }

    /// Chooses an endpoint, avoiding `tried` while any other is available.
    pub(crate) fn pick(
        &self,
        balance: Balance,
        tried: &[Arc<EndpointState>],
        key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Option<Pick<S>> {
        let list = self.snapshot();
        if list.is_empty() {
            return None;
        }
        let now = Instant::now();
        let untried = |e: &&Arc<Member<S>>| !tried.iter().any(|t| Arc::ptr_eq(t, &e.state));
        let serving: Vec<&Arc<Member<S>>> = list.iter().filter(|e| e.serving()).filter(untried).collect();
        // All tried, or none serving: any endpoint beats failing the call here.
        let pool: Vec<&Arc<Member<S>>> = if serving.is_empty() { list.iter().collect() } else { serving };

        if let Some(probe) = pool.iter().find(|e| probe_admitted(e, now)) {
            return Some(Pick { member: Arc::clone(probe), probe: true });
        }
        let in_rotation: Vec<&Arc<Member<S>>> = pool.iter().copied().filter(|e| e.in_rotation()).collect();
        let candidates = if in_rotation.len() * 2 < pool.len() { pool } else { in_rotation };
        let chosen = match (balance, candidates.len()) {
            (_, 0) => return None,
            (_, 1) => candidates[0],
            (Balance::PeakEwma, n) => {
                let a = rng.usize(..n);
                let b = (a + 1 + rng.usize(..n - 1)) % n;
                if candidates[a].load() <= candidates[b].load() { candidates[a] } else { candidates[b] }
            }
            (Balance::RoundRobin, n) => candidates[self.next.fetch_add(1, Ordering::Relaxed) % n],
            (Balance::ConsistentHash, _) => match key {
                Some(key) => candidates
                    .iter()
                    .copied()
                    .max_by_key(|e| rendezvous(key, &e.endpoint))
                    .unwrap_or(candidates[0]),
                None => candidates[rng.usize(..candidates.len())],
            },
        };
        Some(Pick { member: Arc::clone(chosen), probe: false })
    }
}

/// Whether `endpoint` is ejected and due for a probe, taking the probe slot if so.
fn probe_admitted(endpoint: &EndpointState, now: Instant) -> bool {
    let mut ejection = endpoint.ejection.lock().unwrap_or_else(PoisonError::into_inner);
    ejection.probe_due(now) && ejection.admit(now) == Admit::Probe
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::client::breaker::FIRST_OPEN;
    use crate::client::endpoint::EndpointLayer;
    use crate::client::stats::Counters;
    use crate::registry::Endpoint;
    use tower_layer::Layer;

    fn endpoints(n: u16) -> (Endpoints<()>, Vec<Arc<EndpointState>>) {
        let counters = Arc::new(Counters::default());
        let list: Vec<Arc<EndpointState>> = (1..=n)
            .map(|port| {
                let endpoint = Endpoint::new("127.0.0.1", port);
                Arc::new(EndpointState::new(endpoint, "t.v1.T", Arc::default(), counters.clone()))
            })
            .collect();
        let set = Endpoints::default();
        let members = list.iter().map(|state| {
            Arc::new(Member {
                state: state.clone(),
                service: EndpointLayer::new(state.clone()).layer(()),
                _health: None,
            })
        });
        set.replace(members.collect());
        (set, list)
    }

    fn ports(set: &Endpoints<()>, tried: &[Arc<EndpointState>], picks: usize) -> HashSet<u16> {
        let mut rng = fastrand::Rng::with_seed(3);
        (0..picks)
            .map(|_| set.pick(Balance::PeakEwma, tried, None, &mut rng).unwrap().member.endpoint.port())
            .collect()
    }

    fn eject(endpoint: &EndpointState) {
        endpoint.ejection.lock().unwrap().force_open(Instant::now(), "test");
    }

    #[tokio::test(start_paused = true)]
    async fn avoids_tried_ejected_and_not_serving_endpoints() {
        let (set, list) = endpoints(4);
        assert_eq!(ports(&set, &[], 200), HashSet::from([1, 2, 3, 4]));
        assert_eq!(ports(&set, &list[..1], 200), HashSet::from([2, 3, 4]), "a retry goes elsewhere");
        eject(&list[1]);
        assert_eq!(ports(&set, &[], 200), HashSet::from([1, 3, 4]), "ejected");
        list[2].set_serving(false);
        assert_eq!(ports(&set, &[], 200), HashSet::from([1, 4]), "NOT_SERVING");
        // All tried: any endpoint beats failing the call.
        assert!(set.pick(Balance::PeakEwma, &list, None, &mut fastrand::Rng::new()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_panic_threshold_ejection_is_ignored() {
        let (set, list) = endpoints(4);
        eject(&list[0]);
        eject(&list[1]);
        assert_eq!(ports(&set, &[], 200), HashSet::from([3, 4]), "half ejected: still honoured");
        eject(&list[2]);
        assert_eq!(ports(&set, &[], 400), HashSet::from([1, 2, 3, 4]), "most ejected: ignored");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_gets_one_probe_at_a_time_when_due() {
        let (set, list) = endpoints(3);
        eject(&list[0]);
        let mut rng = fastrand::Rng::with_seed(5);
        assert!((0..50).all(|_| !set.pick(Balance::PeakEwma, &[], None, &mut rng).unwrap().probe));
        tokio::time::advance(FIRST_OPEN).await;
        let probe = set.pick(Balance::PeakEwma, &[], None, &mut rng).unwrap();
        assert!(probe.probe && probe.member.endpoint.port() == 1);
        // While the probe is out, the endpoint stays out of rotation.
        assert_eq!(ports(&set, &[], 100), HashSet::from([2, 3]));
        probe.member.ejection.lock().unwrap().succeeded();
        assert_eq!(ports(&set, &[], 200), HashSet::from([1, 2, 3]), "back after a good probe");
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_and_hashing_are_deterministic() {
        let (set, _) = endpoints(3);
        let mut rng = fastrand::Rng::with_seed(1);
        let turns: Vec<u16> = (0..6)
            .map(|_| set.pick(Balance::RoundRobin, &[], None, &mut rng).unwrap().member.endpoint.port())
            .collect();
        assert_eq!(turns[..3], turns[3..], "each in turn: {turns:?}");
        let key = Some(crate::client::balance::HashKey::new("order-42").value());
        let homes: HashSet<u16> = (0..50)
            .map(|_| set.pick(Balance::ConsistentHash, &[], key, &mut rng).unwrap().member.endpoint.port())
            .collect();
        assert_eq!(homes.len(), 1);
    }
}
