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

use smallvec::SmallVec;
use tokio::time::Instant;

use super::Balance;
use super::hash::{rendezvous, weighted_score};
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

/// Candidates for one pick, on the stack for fleets of up to 8.
type Pool<'a, S> = SmallVec<[&'a Arc<Member<S>>; 8]>;

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
        let serving: Pool<'_, S> = list.iter().filter(|e| e.serving()).filter(untried).collect();
        // All tried, or none serving: any endpoint beats failing the call here.
        let pool: Pool<'_, S> = if serving.is_empty() { list.iter().collect() } else { serving };

        if let Some(probe) = pool.iter().find(|e| probe_admitted(e, now)) {
            return Some(Pick { member: Arc::clone(probe), probe: true });
        }
        let in_rotation: Pool<'_, S> = pool.iter().copied().filter(|e| e.in_rotation()).collect();
        let candidates = if in_rotation.len() * 2 < pool.len() { pool } else { in_rotation };
        // Weight 0 drains an endpoint: it gets calls only when nothing else can.
        let weighted: Pool<'_, S> = candidates.iter().copied().filter(|e| e.weight() > 0).collect();
        let candidates = if weighted.is_empty() { candidates } else { weighted };
        let chosen = match balance {
            // Every client must send a key to the same endpoint, wherever it runs.
            Balance::ConsistentHash => match key {
                Some(key) => candidates.iter().copied().max_by(|a, b| {
                    let score = |e: &Member<S>| weighted_score(rendezvous(key, &e.endpoint), weight(e));
                    score(a).total_cmp(&score(b))
                })?,
                None => candidates[weighted_index(&candidates, None, rng)?],
            },
            Balance::PeakEwma | Balance::RoundRobin => {
                let (local, remote): (Pool<'_, S>, Pool<'_, S>) =
                    candidates.iter().copied().partition(|e| e.local());
                if local.is_empty() || remote.is_empty() {
                    self.choose(balance, &candidates, rng)?
                } else {
                    // The zone's own pick, unless it has become far slower
                    // than another zone's: overloaded or stalled.
                    let near = self.choose(balance, &local, rng)?;
                    let far = power_of_two(&remote, rng)?;
                    let limit = SPILL_OVER * far.zone_latency() + SPILL_FLOOR.as_nanos() as f64;
                    if near.zone_latency() > limit { far } else { near }
                }
            }
        };
        Some(Pick { member: Arc::clone(chosen), probe: false })
    }

    /// One of `candidates`, by `balance` (not hashing), in proportion to weight.
    fn choose<'a>(
        &self,
        balance: Balance,
        candidates: &[&'a Arc<Member<S>>],
        rng: &mut fastrand::Rng,
    ) -> Option<&'a Arc<Member<S>>> {
        match balance {
            Balance::RoundRobin => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                candidates.get(weighted_turn(candidates, turn)).copied()
            }
            _ => power_of_two(candidates, rng),
        }
    }
}

/// How much slower than another zone's pick (its zone latency) the
/// client's own zone's pick may be, plus [`SPILL_FLOOR`], before the call
/// goes to the other zone.
pub(crate) const SPILL_OVER: f64 = 2.0;

/// Latency differences below this never send a call out of its zone, so
/// the jitter of fast calls does not.
pub(crate) const SPILL_FLOOR: std::time::Duration = std::time::Duration::from_millis(5);

/// An endpoint's weight for choosing among candidates that all have some
/// (all zero counts as all equal).
fn weight(endpoint: &EndpointState) -> u32 {
    endpoint.weight().max(1)
}

/// Load per unit of weight: a heavier endpoint looks less loaded.
fn per_weight(endpoint: &EndpointState) -> f64 {
    endpoint.load() / f64::from(weight(endpoint))
}

/// Power of two choices: two candidates drawn in proportion to weight, the
/// less loaded per unit of weight wins.
fn power_of_two<'a, S>(
    candidates: &[&'a Arc<Member<S>>],
    rng: &mut fastrand::Rng,
) -> Option<&'a Arc<Member<S>>> {
    let a = weighted_index(candidates, None, rng)?;
    let Some(b) = weighted_index(candidates, Some(a), rng) else { return Some(candidates[a]) };
    let (a, b) = (candidates[a], candidates[b]);
    Some(if per_weight(a) <= per_weight(b) { a } else { b })
}

/// A random index into `candidates`, each in proportion to its weight,
/// leaving out `except`; `None` if nothing is left.
fn weighted_index<S>(
    candidates: &[&Arc<Member<S>>],
    except: Option<usize>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != except)
        .map(|(_, e)| u64::from(weight(e)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.u64(..total);
    for (i, e) in candidates.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        let w = u64::from(weight(e));
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
}

/// The index of the candidate whose turn `turn` is, in weighted round
/// robin: over every cycle of (sum of weights / their gcd) turns each
/// candidate gets its weight's share, interleaved rather than in runs (the
/// turns step through the cycle by a stride near the golden ratio of its
/// length, coprime with it). Equal weights take strict turns.
fn weighted_turn<S>(candidates: &[&Arc<Member<S>>], turn: usize) -> usize {
    let n = candidates.len();
    let divisor = candidates.iter().map(|e| u64::from(weight(e))).fold(0, gcd).max(1);
    let units = || candidates.iter().map(|e| u64::from(weight(e)) / divisor);
    let cycle: u64 = units().sum();
    if cycle == n as u64 {
        return turn % n;
    }
    let mut stride = ((cycle as f64) * 0.618_033_988_7) as u64;
    while gcd(stride.max(1), cycle) != 1 {
        stride += 1;
    }
    let position = u128::from(turn as u64 % cycle) * u128::from(stride.max(1)) % u128::from(cycle);
    let mut slot = position as u64;
    for (i, unit) in units().enumerate() {
        if slot < unit {
            return i;
        }
        slot -= unit;
    }
    n - 1
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
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

    fn shares(set: &Endpoints<()>, balance: Balance, picks: usize, keyed: bool) -> [usize; 3] {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0; 3];
        // Calls stay in flight for a while, as under load, so peak-EWMA sees them.
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..picks {
            let key = keyed.then(|| crate::client::balance::HashKey::new(format!("key-{i}")).value());
            let pick = set.pick(balance, &[], key, &mut rng).unwrap();
            counts[usize::from(pick.member.endpoint.port()) - 1] += 1;
            in_flight.push_back(pick.member.state.start());
            if in_flight.len() > 40 {
                in_flight.pop_front();
            }
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn weights_set_each_endpoints_share_and_zero_drains() {
        let (set, list) = endpoints(3);
        for (state, weight) in list.iter().zip([100, 300, 0]) {
            state.set_placement(weight, false);
        }
        assert_eq!(shares(&set, Balance::RoundRobin, 4000, false), [1000, 3000, 0], "round robin: exact");
        let [light, heavy, drained] = shares(&set, Balance::ConsistentHash, 8000, true);
        assert_eq!(drained, 0);
        let heavy_share = heavy as f64 / 8000.0;
        assert!((0.72..0.78).contains(&heavy_share), "hashing: {light} / {heavy}");
        let [light, heavy, drained] = shares(&set, Balance::PeakEwma, 8000, false);
        assert_eq!(drained, 0);
        let heavy_share = heavy as f64 / 8000.0;
        assert!((0.65..0.85).contains(&heavy_share), "peak-EWMA: {light} / {heavy}");
        // Interleaved, not in runs: no endpoint gets four turns in a row.
        let mut rng = fastrand::Rng::with_seed(1);
        let turns: Vec<u16> = (0..40)
            .map(|_| set.pick(Balance::RoundRobin, &[], None, &mut rng).unwrap().member.endpoint.port())
            .collect();
        assert!(turns.windows(4).all(|w| w.iter().any(|p| *p != w[0])), "{turns:?}");
        // Every endpoint drained: weight no longer matters, calls still go out.
        for state in &list {
            state.set_placement(0, false);
        }
        assert_eq!(ports(&set, &[], 200), HashSet::from([1, 2, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_prefers_its_zone_and_spills_over_when_it_cannot_take_the_call() {
        let (set, list) = endpoints(3);
        list[0].set_placement(100, true);
        for balance in [Balance::PeakEwma, Balance::RoundRobin] {
            let mut rng = fastrand::Rng::with_seed(2);
            assert!(
                (0..200).all(|_| set.pick(balance, &[], None, &mut rng).unwrap().member.endpoint.port() == 1),
                "{balance:?}: the own zone while it can"
            );
        }
        // Busy but as fast as the others: still at home.
        let busy: Vec<_> = (0..8).map(|_| list[0].start()).collect();
        assert_eq!(ports(&set, &[], 200), HashSet::from([1]), "calls in flight alone do not spill");
        // Stalled: its calls in flight are older than twice the others' latency + 5 ms.
        tokio::time::advance(std::time::Duration::from_millis(8)).await;
        assert_eq!(ports(&set, &[], 200), HashSet::from([2, 3]), "spilled over");
        drop(busy);
        // One slow answer is a spike, not a slow endpoint.
        list[0].sample(std::time::Duration::from_millis(30), Instant::now());
        assert_eq!(ports(&set, &[], 200), HashSet::from([1]), "a spike does not spill");
        // Slow answers: spilled over; the peak decays as time passes, and calls come back.
        for _ in 0..50 {
            list[0].sample(std::time::Duration::from_millis(30), Instant::now());
        }
        assert_eq!(ports(&set, &[], 200), HashSet::from([2, 3]), "slow: spilled over");
        tokio::time::advance(std::time::Duration::from_secs(20)).await;
        assert_eq!(ports(&set, &[], 200), HashSet::from([1]), "back home");
        eject(&list[0]);
        assert_eq!(ports(&set, &[], 200), HashSet::from([2, 3]), "the zone's only endpoint is ejected");
        // A retry of a call that tried the zone's endpoint goes elsewhere.
        let (set, list) = endpoints(3);
        list[0].set_placement(100, true);
        assert_eq!(ports(&set, &list[..1], 200), HashSet::from([2, 3]));
    }
}
