//! Latency outliers: an endpoint far slower than its peers is ejected.

use std::sync::Weak;
use std::time::Duration;

use super::Shared;

/// How often endpoints far slower than their peers are looked for.
const OUTLIER_CHECK: Duration = Duration::from_millis(200);

/// An endpoint is a latency outlier above this multiple of the median...
const OUTLIER_FACTOR: f64 = 4.0;

/// ...and this much above it in absolute terms.
const OUTLIER_MARGIN: Duration = Duration::from_millis(10);

/// Every [`OUTLIER_CHECK`], updates the outlier limit (which probes are
/// judged by) and ejects the slowest endpoint if it is above it.
pub(super) async fn eject_outliers<S>(shared: Weak<Shared<S>>) {
    let mut ticks = tokio::time::interval(OUTLIER_CHECK);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let list = shared.endpoints.snapshot();
        let rotation: Vec<_> = list.iter().filter(|e| e.in_rotation()).collect();
        let limit = outlier_limit(rotation.iter().map(|e| e.mean_latency()).collect());
        shared.outliers.set(limit);
        // A median needs peers; ejecting must keep most endpoints in rotation.
        if rotation.len() < 3 || (rotation.len() - 1) * 2 < list.len() {
            continue;
        }
        let Some(limit) = limit else { continue };
        let slowest = rotation.iter().max_by_key(|e| e.mean_latency()).filter(|e| e.mean_latency() > limit);
        if let Some(slowest) = slowest {
            let reason = format!(
                "mean latency {:?} is far above its peers' (limit {limit:?})",
                slowest.mean_latency()
            );
            slowest.eject(&reason);
        }
    }
}

/// The latency above which an endpoint is an outlier: far above the median
/// of `latencies` (of the endpoints in rotation); `None` with too few.
fn outlier_limit(mut latencies: Vec<Duration>) -> Option<Duration> {
    if latencies.len() < 2 {
        return None;
    }
    latencies.sort_unstable();
    let median = latencies[latencies.len() / 2];
    Some(median.mul_f64(OUTLIER_FACTOR).max(median + OUTLIER_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_far_above_the_median() {
        let ms = Duration::from_millis;
        assert_eq!(outlier_limit(vec![ms(1)]), None, "no peers");
        assert_eq!(outlier_limit(vec![ms(1), ms(2), ms(100)]), Some(ms(12)), "2 ms median: +10 ms wins");
        assert_eq!(outlier_limit(vec![ms(20), ms(30), ms(40)]), Some(ms(120)), "30 ms median: 4x wins");
    }
}
