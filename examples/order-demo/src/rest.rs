//! `--protocol rest`: the same orders over REST/JSON (the routes the order
//! protos declare with `google.api.http`), as a plain HTTP client would
//! place them: each call to the next instance the registry lists, a write
//! repeated with its idempotency key (to another instance) when the answer
//! is lost or says the instance is unavailable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::watch;
use trellis::Registry;
use trellis::registry::Endpoint;

/// How long one REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The instances of one service, kept current from the registry, taken in turn.
#[derive(Debug, Clone)]
struct Instances {
    service: &'static str,
    endpoints: watch::Receiver<Vec<Endpoint>>,
    next: Arc<AtomicUsize>,
}

impl Instances {
    async fn watch(registry: &Registry, service: &'static str) -> Result<Self, String> {
        let mut resolution =
            registry.resolve(service).await.map_err(|e| format!("cannot resolve {service}: {e}"))?;
        let (tx, endpoints) = watch::channel(resolution.endpoints().into_iter().collect());
        tokio::spawn(async move {
            while let Some(instances) = resolution.changed().await {
                let mut now: Vec<Endpoint> = instances.iter().map(|i| i.endpoint.clone()).collect();
                now.sort();
                now.dedup();
                if tx.send(now).is_err() {
                    return;
                }
            }
        });
        Ok(Instances { service, endpoints, next: Arc::new(AtomicUsize::new(0)) })
    }

    fn pick(&self) -> Result<Endpoint, String> {
        let endpoints = self.endpoints.borrow();
        if endpoints.is_empty() {
            return Err(format!("the registry lists no instance of {}", self.service));
        }
        Ok(endpoints[self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()].clone())
    }
}

/// The three services over REST.
#[derive(Debug, Clone)]
pub(crate) struct RestClients {
    http: Client<HttpConnector, Full<Bytes>>,
    payment: Instances,
    shipping: Instances,
    status: Instances,
    /// Calls per endpoint, for the summary.
    calls: Arc<std::sync::Mutex<std::collections::BTreeMap<Endpoint, u64>>>,
}

impl RestClients {
    pub(crate) async fn connect(registry: &Registry) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(RestClients {
            http: Client::builder(TokioExecutor::new()).build(connector),
            payment: Instances::watch(registry, "order.payment.v1.OrderPayment").await?,
            shipping: Instances::watch(registry, "order.shipping.v1.OrderShipping").await?,
            status: Instances::watch(registry, "order.status.v1.OrderStatus").await?,
            calls: Arc::default(),
        })
    }

    /// Calls per endpoint so far.
    pub(crate) fn calls_per_endpoint(&self) -> Vec<(Endpoint, u64)> {
        self.calls
            .lock()
            .map(|calls| calls.iter().map(|(e, n)| (e.clone(), *n)).collect())
            .unwrap_or_default()
    }

    /// Pays, ships and checks the order's status, over REST. Returns how
    /// many writes were sent again with their idempotency key.
    pub(crate) async fn place_one(&self, order_id: &str) -> Result<u64, String> {
        let mut repeated = 0;
        let pay = json!({
            "orderId": order_id,
            "amountMinor": "1999",
            "currency": "EUR",
            "idempotencyKey": format!("{order_id}-pay"),
        });
        self.write(&self.payment, "/v1/payments", &pay, &mut repeated)
            .await
            .map_err(|e| format!("{order_id}: POST /v1/payments: {e}"))?;
        let ship = json!({
            "orderId": order_id,
            "idempotencyKey": format!("{order_id}-ship"),
            "address": {
                "name": "Ada Lovelace",
                "line1": "12 St James's Square",
                "city": "London",
                "postalCode": "SW1Y 4JH",
                "country": "GB",
            },
        });
        self.write(&self.shipping, "/v1/shipments", &ship, &mut repeated)
            .await
            .map_err(|e| format!("{order_id}: POST /v1/shipments: {e}"))?;
        let path = format!("/v1/orders/{order_id}/status");
        let report =
            self.read(&self.status, &path).await.map_err(|e| format!("{order_id}: GET {path}: {e}"))?;
        match report["state"].as_str() {
            Some("ORDER_STATE_SHIPPED") => Ok(repeated),
            other => Err(format!("{order_id}: GET {path} says {other:?}, expected ORDER_STATE_SHIPPED")),
        }
    }

    /// POSTs `body` until an instance answers it; repeating is safe, since the
    /// body carries the idempotency key.
    async fn write(
        &self,
        to: &Instances,
        path: &str,
        body: &Value,
        repeated: &mut u64,
    ) -> Result<Value, String> {
        const MAX_REPEATS: u64 = 20;
        let mut attempts = 0;
        loop {
            match self.call(to, Method::POST, path, Some(body)).await {
                Err(Failure::Retryable(_)) if attempts < MAX_REPEATS => {
                    attempts += 1;
                    *repeated += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Failure::Retryable(e) | Failure::Final(e)) => return Err(e),
                Ok(value) => return Ok(value),
            }
        }
    }

    /// GETs `path`, trying the next instance when one is unreachable.
    async fn read(&self, from: &Instances, path: &str) -> Result<Value, String> {
        let mut attempts = 0;
        loop {
            match self.call(from, Method::GET, path, None).await {
                Err(Failure::Retryable(_)) if attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Failure::Retryable(e) | Failure::Final(e)) => return Err(e),
                Ok(value) => return Ok(value),
            }
        }
    }

    async fn call(
        &self,
        to: &Instances,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let endpoint = to.pick().map_err(Failure::Retryable)?;
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(endpoint.clone()).or_default() += 1;
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{endpoint}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-trellis-timeout", "5s")
            .body(Full::new(body))
            .map_err(|e| Failure::Final(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| Failure::Retryable(format!("{endpoint}: {e}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Retryable(format!("{endpoint}: reading the answer: {e}")))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| Failure::Final(format!("{endpoint} answered {status} with no JSON: {e}")))?;
            match status {
                StatusCode::OK => Ok(value),
                StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS => {
                    Err(Failure::Retryable(format!("{endpoint} answered {status}: {value}")))
                }
                _ => Err(Failure::Final(format!("{endpoint} answered {status}: {value}"))),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange).await.unwrap_or_else(|_| {
            Err(Failure::Retryable(format!("{endpoint}: no answer within {CALL_TIMEOUT:?}")))
        })
    }
}

/// Why a call failed: worth sending again (to another instance), or not.
#[derive(Debug)]
enum Failure {
    Retryable(String),
    Final(String),
}
