//! Placing orders through the services and summing up what happened.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use order_payment::proto::order::payment::v1::{OrderPaymentClient, PayRequest};
use order_shipping::proto::order::shipping::v1::{Address, OrderShippingClient, ShipRequest};
use order_status::proto::order::status::v1::{GetStatusRequest, OrderState, OrderStatusClient};
use tokio::sync::Mutex;
use trellis::Registry;

/// What the demo saw.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) placed: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    errors: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Calls each instance received from the demo, by label.
    pub(crate) per_instance: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
struct Clients {
    payment: OrderPaymentClient,
    shipping: OrderShippingClient,
    status: OrderStatusClient,
    /// The channels under the clients, for their per-endpoint counts.
    channels: [trellis::codegen::Channel; 3],
}

/// Places `orders` orders, `concurrency` at a time, until done or `stop`.
/// `label` names the instance at an endpoint.
pub(crate) async fn place_orders(
    registry: &Registry,
    label: impl Fn(&trellis::registry::Endpoint) -> String,
    orders: u64,
    concurrency: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Summary {
    let clients = match connect(registry) {
        Ok(clients) => clients,
        Err(err) => {
            return Summary { failed: 1, errors: vec![err.to_string()], ..Summary::default() };
        }
    };
    let run = std::process::id();
    let bar = ProgressBar::new(orders);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} orders {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let next = Arc::new(AtomicU64::new(0));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (clients, next, summary, bar, stop) =
                (clients.clone(), next.clone(), summary.clone(), bar.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= orders || *stop.borrow() {
                        return;
                    }
                    let began = Instant::now();
                    let result = place_one(&clients, &format!("demo-{run}-{n}")).await;
                    let mut summary = summary.lock().await;
                    summary.placed += 1;
                    match result {
                        Ok(()) => {
                            summary.succeeded += 1;
                            summary.latencies.push(began.elapsed());
                        }
                        Err(err) => {
                            summary.failed += 1;
                            if summary.errors.len() < 5 {
                                summary.errors.push(err);
                            }
                            bar.set_message(format!("{} failed", summary.failed));
                        }
                    }
                    bar.inc(1);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    bar.finish();
    let mut summary = std::mem::take(&mut *summary.lock().await);
    summary.elapsed = start.elapsed();
    summary.per_instance = clients
        .channels
        .iter()
        .flat_map(|channel| channel.calls_per_endpoint())
        .map(|(endpoint, calls)| (label(&endpoint), calls))
        .collect();
    summary.per_instance.sort();
    summary
}

fn connect(registry: &Registry) -> Result<Clients, trellis::Error> {
    use order_payment::proto::order::payment::v1::ORDER_PAYMENT_DESCRIPTOR;
    use order_shipping::proto::order::shipping::v1::ORDER_SHIPPING_DESCRIPTOR;
    use order_status::proto::order::status::v1::ORDER_STATUS_DESCRIPTOR;
    use trellis::codegen::Channel;
    let channels = [
        Channel::discover(registry, &ORDER_PAYMENT_DESCRIPTOR)?,
        Channel::discover(registry, &ORDER_SHIPPING_DESCRIPTOR)?,
        Channel::discover(registry, &ORDER_STATUS_DESCRIPTOR)?,
    ];
    Ok(Clients {
        payment: OrderPaymentClient::new(channels[0].clone()),
        shipping: OrderShippingClient::new(channels[1].clone()),
        status: OrderStatusClient::new(channels[2].clone()),
        channels,
    })
}

/// Pays, ships, and checks that the status service sees the order shipped.
async fn place_one(clients: &Clients, order_id: &str) -> Result<(), String> {
    let Clients { mut payment, mut shipping, mut status, .. } = clients.clone();
    payment
        .pay(PayRequest {
            order_id: order_id.to_owned(),
            amount_minor: 1999,
            currency: "EUR".to_owned(),
            idempotency_key: format!("{order_id}-pay"),
        })
        .await
        .map_err(|s| format!("{order_id}: Pay: {}: {}", s.code(), s.message()))?;
    shipping
        .ship(ShipRequest {
            order_id: order_id.to_owned(),
            address: Some(Address {
                name: "Ada Lovelace".to_owned(),
                line1: "12 St James's Square".to_owned(),
                city: "London".to_owned(),
                postal_code: "SW1Y 4JH".to_owned(),
                country: "GB".to_owned(),
                ..Address::default()
            }),
            idempotency_key: format!("{order_id}-ship"),
        })
        .await
        .map_err(|s| format!("{order_id}: Ship: {}: {}", s.code(), s.message()))?;
    let report = status
        .get_status(GetStatusRequest { order_id: order_id.to_owned() })
        .await
        .map_err(|s| format!("{order_id}: GetStatus: {}: {}", s.code(), s.message()))?
        .into_inner();
    match report.state() {
        OrderState::Shipped => Ok(()),
        other => Err(format!("{order_id}: GetStatus says {other:?}, expected Shipped")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rate = self.placed as f64 / self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "orders placed    {}", self.placed)?;
        writeln!(f, "  succeeded      {}", self.succeeded)?;
        writeln!(f, "  failed         {}", self.failed)?;
        writeln!(f, "throughput       {rate:.0} orders/s over {:.1?}", self.elapsed)?;
        writeln!(
            f,
            "order latency    p50 {:.1?}  p99 {:.1?}  (Pay + Ship + GetStatus)",
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0)
        )?;
        writeln!(f, "calls per instance (from the demo's clients)")?;
        for (instance, calls) in &self.per_instance {
            writeln!(f, "  {instance:<18} {calls}")?;
        }
        for error in &self.errors {
            writeln!(f, "  error: {error}")?;
        }
        Ok(())
    }
}
