//! Placing orders through the services and summing up what happened.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
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
    /// Attempts each endpoint received from the demo's clients.
    pub(crate) per_endpoint: Vec<(trellis::registry::Endpoint, u64)>,
    /// The same, by instance label (filled in by the caller).
    pub(crate) per_instance: Vec<(String, u64)>,
    /// Pay or Ship calls sent again with their idempotency key after an
    /// ambiguous failure (the instance died mid-call).
    repeated_by_key: u64,
    retries: u64,
    ejections: u64,
    breaker_trips: u64,
    /// Placed over REST, so without the gRPC client stack.
    rest: bool,
}

/// How the demo places its orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// Through the generated gRPC clients and their stack (balancing,
    /// retries, hedging, breakers).
    Grpc,
    /// Over REST/JSON, the services' google.api.http routes.
    Rest,
}

#[derive(Debug, Clone)]
enum Clients {
    Grpc(Arc<GrpcClients>),
    Rest(Arc<crate::rest::RestClients>),
}

#[derive(Debug, Clone)]
struct GrpcClients {
    payment: OrderPaymentClient,
    shipping: OrderShippingClient,
    status: OrderStatusClient,
    /// The channels under the clients, for their per-endpoint counts.
    channels: [trellis::codegen::Channel; 3],
}

/// Places `orders` orders, `concurrency` at a time, until done or `stop`,
/// showing progress on `bar`.
pub(crate) async fn place_orders(
    registry: &Registry,
    protocol: Protocol,
    bar: ProgressBar,
    orders: u64,
    concurrency: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Summary {
    let clients = match protocol {
        Protocol::Grpc => connect(registry).map(|c| Clients::Grpc(Arc::new(c))).map_err(|e| e.to_string()),
        Protocol::Rest => {
            crate::rest::RestClients::connect(registry).await.map(|c| Clients::Rest(Arc::new(c)))
        }
    };
    let clients = match clients {
        Ok(clients) => clients,
        Err(err) => return Summary { failed: 1, errors: vec![err], ..Summary::default() },
    };
    let run = std::process::id();
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
                    let order_id = format!("demo-{run}-{n}");
                    let result = match &clients {
                        Clients::Grpc(clients) => place_one(clients, &order_id).await,
                        Clients::Rest(clients) => clients.place_one(&order_id).await,
                    };
                    let mut summary = summary.lock().await;
                    summary.placed += 1;
                    match result {
                        Ok(repeated) => {
                            summary.repeated_by_key += repeated;
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
    match &clients {
        Clients::Grpc(clients) => {
            for channel in &clients.channels {
                let stats = channel.stats();
                summary.per_endpoint.extend(stats.calls_per_endpoint);
                summary.retries += stats.retries;
                summary.ejections += stats.ejections;
                summary.breaker_trips += stats.breaker_trips;
            }
        }
        Clients::Rest(clients) => {
            summary.per_endpoint = clients.calls_per_endpoint();
            summary.rest = true;
        }
    }
    summary
}

fn connect(registry: &Registry) -> Result<GrpcClients, trellis::Error> {
    use order_payment::proto::order::payment::v1::ORDER_PAYMENT_DESCRIPTOR;
    use order_shipping::proto::order::shipping::v1::ORDER_SHIPPING_DESCRIPTOR;
    use order_status::proto::order::status::v1::ORDER_STATUS_DESCRIPTOR;
    use trellis::codegen::Channel;
    let channels = [
        Channel::discover(registry, &ORDER_PAYMENT_DESCRIPTOR)?,
        Channel::discover(registry, &ORDER_SHIPPING_DESCRIPTOR)?,
        Channel::discover(registry, &ORDER_STATUS_DESCRIPTOR)?,
    ];
    Ok(GrpcClients {
        payment: OrderPaymentClient::new(channels[0].clone()),
        shipping: OrderShippingClient::new(channels[1].clone()),
        status: OrderStatusClient::new(channels[2].clone()),
        channels,
    })
}

/// Places one more order inside one trace and returns the trace's id: each
/// of its calls, and the calls order-status makes for it, is a span of that
/// trace, logged with its id by every service it reaches.
pub(crate) async fn traced_order(registry: &Registry) -> Result<String, String> {
    let clients = connect(registry).map_err(|e| e.to_string())?;
    let ctx = trellis::context::RequestContext::traced();
    let trace_id = ctx.trace().map(|t| t.trace_id().to_string()).unwrap_or_default();
    let order_id = format!("order-{}-traced", std::process::id());
    ctx.scope(place_one(&clients, &order_id)).await?;
    Ok(trace_id)
}

/// Pays, ships, and checks that the status service sees the order shipped.
/// Returns how many writes had to be sent again with their idempotency key.
async fn place_one(clients: &GrpcClients, order_id: &str) -> Result<u64, String> {
    let GrpcClients { payment, shipping, mut status, .. } = clients.clone();
    let mut repeated = 0;
    let pay = PayRequest {
        order_id: order_id.to_owned(),
        amount_minor: 1999,
        currency: "EUR".to_owned(),
        idempotency_key: format!("{order_id}-pay"),
    };
    by_key(&mut repeated, || {
        let (mut payment, pay) = (payment.clone(), pay.clone());
        async move { payment.pay(pay).await }
    })
    .await
    .map_err(|s| format!("{order_id}: Pay: {}: {}", s.code(), s.message()))?;
    let ship = ShipRequest {
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
    };
    by_key(&mut repeated, || {
        let (mut shipping, ship) = (shipping.clone(), ship.clone());
        async move { shipping.ship(ship).await }
    })
    .await
    .map_err(|s| format!("{order_id}: Ship: {}: {}", s.code(), s.message()))?;
    let report = status
        .get_status(GetStatusRequest { order_id: order_id.to_owned() })
        .await
        .map_err(|s| format!("{order_id}: GetStatus: {}: {}", s.code(), s.message()))?
        .into_inner();
    match report.state() {
        OrderState::Shipped => Ok(repeated),
        other => Err(format!("{order_id}: GetStatus says {other:?}, expected Shipped")),
    }
}

/// Sends a write until it is acknowledged, repeating it with the same
/// idempotency key after an ambiguous failure (the instance may have died
/// mid-call): the key makes the repeat safe, so nothing is charged twice.
async fn by_key<T, F, Fut>(repeated: &mut u64, mut send: F) -> Result<T, trellis::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, trellis::Status>>,
{
    const MAX_REPEATS: u64 = 20;
    let mut attempts = 0;
    loop {
        match send().await {
            Err(status)
                if attempts < MAX_REPEATS
                    && matches!(
                        status.code(),
                        trellis::Code::Unavailable | trellis::Code::DeadlineExceeded
                    ) =>
            {
                attempts += 1;
                *repeated += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
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
        if self.rest {
            writeln!(f, "client           REST/JSON, each call to the next instance the registry lists")?;
        } else {
            writeln!(
                f,
                "client stack     {} retries, {} ejections, {} breaker trips",
                self.retries, self.ejections, self.breaker_trips
            )?;
        }
        writeln!(f, "writes repeated with their idempotency key  {}", self.repeated_by_key)?;
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
