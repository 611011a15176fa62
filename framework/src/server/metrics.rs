//! The server's metrics: calls started and handled per method and status
//! code, their duration, calls in flight, calls shed and calls refused for
//! an expired deadline (see [`crate::metrics`] for the names).
//!
//! Like the trace layer, it learns a call's status at its very end: from
//! the headers of a trailers-only answer, else from the trailers, else
//! `CANCELLED` when the body is dropped first. The layers below that refuse
//! a call without running it (load shedding, an expired deadline) mark the
//! response with a [`Refused`] extension, which this layer counts.
//!
//! Per call: one lookup of the path in a sorted table (label sets are
//! resolved when the server starts, and per status code on the first call
//! that ends with it), an `Arc` clone, and relaxed atomic adds. Health and reflection
//! calls are not counted.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::descriptor::ServiceDescriptor;
use crate::metrics::{CallLabels, Histogram, MethodLabels, Metrics, code_name};
use crate::protocol;
use crate::protocol::end::{CallEnd, EndBody, Ending};
use crate::protocol::per_method::PerMethod;

/// Set by a layer that answered a call without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Shed: `server.max_concurrent_calls` were in flight.
    Shed,
    /// It arrived with no time left.
    Expired,
}

/// One method's metric handles.
#[derive(Debug)]
struct MethodMetrics {
    labels: MethodLabels,
    started: Counter,
    in_flight: Gauge,
    shed: Counter,
    expired: Counter,
    /// Handled and duration, per status code, resolved on first use.
    by_code: [OnceLock<(Counter, Histogram)>; 17],
    metrics: Metrics,
}

impl MethodMetrics {
    fn new(metrics: &Metrics, service: &'static str, method: &'static str) -> Self {
        let labels = MethodLabels { service, method };
        let families = metrics.server();
        MethodMetrics {
            started: families.started.get_or_create_owned(&labels),
            in_flight: families.in_flight.get_or_create_owned(&labels),
            shed: families.shed.get_or_create_owned(&labels),
            expired: families.expired.get_or_create_owned(&labels),
            labels,
            by_code: Default::default(),
            metrics: metrics.clone(),
        }
    }

    fn finish(&self, code: Code, start: Instant) {
        self.in_flight.dec();
        let slot = usize::try_from(code as i32).unwrap_or(2).min(16);
        let (handled, duration) = self.by_code[slot].get_or_init(|| {
            let labels = CallLabels {
                service: self.labels.service,
                method: self.labels.method,
                code: code_name(code),
            };
            let families = self.metrics.server();
            (families.handled.get_or_create_owned(&labels), families.duration.get_or_create_owned(&labels))
        });
        handled.inc();
        duration.observe(start.elapsed());
    }
}

/// The handles of every method, by path; a path no service has is counted
/// under `unknown`.
type Table = PerMethod<Arc<MethodMetrics>>;

/// Counts every call; see the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct MetricsLayer {
    table: Arc<Table>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: &Metrics, services: &[&'static ServiceDescriptor]) -> Self {
        let by_path = services
            .iter()
            .flat_map(|s| s.methods().iter().map(move |m| (s.name(), m)))
            .map(|(service, m)| (m.path(), Arc::new(MethodMetrics::new(metrics, service, m.name()))));
        let unknown = Arc::new(MethodMetrics::new(metrics, "unknown", "unknown"));
        MetricsLayer { table: Arc::new(PerMethod::new(by_path, unknown)) }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService { inner, table: Arc::clone(&self.table) }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct MetricsService<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let call = (!protocol::is_builtin(path)).then(|| {
            let method = self.table.get(path);
            method.started.inc();
            method.in_flight.inc();
            Call { method: Arc::clone(method), start: Instant::now() }
        });
        MetricsFuture { inner: self.inner.call(req), call: Ending::new(call) }
    }
}

/// One call until its status is known.
#[derive(Debug)]
pub(crate) struct Call {
    method: Arc<MethodMetrics>,
    start: Instant,
}

impl CallEnd for Call {
    fn end(self, code: Code) {
        self.method.finish(code, self.start);
    }
}

/// Response body of [`MetricsService`]: counts the call when its status passes.
pub(crate) type MetricsBody<B> = EndBody<B, Call>;

pin_project! {
    /// Response future of [`MetricsService`].
    pub(crate) struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Ending<Call>,
    }
}

impl<F, ResBody, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = std::mem::take(this.call);
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(call) = call.get() {
                    match response.extensions().get::<Refused>() {
                        Some(Refused::Shed) => call.method.shed.inc(),
                        Some(Refused::Expired) => call.method.expired.inc(),
                        None => 0,
                    };
                }
                Ok(call.into_response(response))
            }
            Err(err) => {
                call.end(Code::Internal);
                Err(err)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn request(path: &str) -> Request<tonic::body::Body> {
        Request::builder().uri(path).body(tonic::body::Body::empty()).unwrap()
    }

    fn handled(text: &str, code: &str) -> Option<u64> {
        let series =
            format!(r#"rpc_server_calls_handled_total{{service="unknown",method="unknown",code="{code}"}} "#);
        text.lines().find_map(|line| line.strip_prefix(series.as_str())).and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn counts_the_status_from_headers_body_end_or_drop_and_what_was_refused() {
        let metrics = Metrics::new("t", "0");
        let layer = MetricsLayer::new(&metrics, &[]);
        let inner = tower::service_fn(|req: Request<tonic::body::Body>| async move {
            let mut response = match req.uri().path() {
                "/shed" => tonic::Status::resource_exhausted("overloaded").into_http(),
                _ => Response::new(tonic::body::Body::empty()),
            };
            if req.uri().path() == "/shed" {
                response.extensions_mut().insert(Refused::Shed);
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let service = layer.layer(inner);

        // Trailers-only, refused by a layer below: counted at the headers.
        let shed = service.clone().oneshot(request("/shed")).await.unwrap();
        drop(shed);
        // Ends with its body.
        let ok = service.clone().oneshot(request("/ok")).await.unwrap();
        ok.into_body().collect().await.unwrap();
        // Dropped before its body ended: the client went away.
        drop(service.clone().oneshot(request("/gone")).await.unwrap());
        // Health is not counted.
        service.oneshot(request("/grpc.health.v1.Health/Check")).await.unwrap();

        let text = metrics.encode();
        assert_eq!(handled(&text, "RESOURCE_EXHAUSTED"), Some(1), "{text}");
        assert_eq!(handled(&text, "OK"), Some(1), "{text}");
        assert_eq!(handled(&text, "CANCELLED"), Some(1), "{text}");
        assert!(
            text.contains(r#"trellis_server_calls_shed_total{service="unknown",method="unknown"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rpc_server_calls_started_total{service="unknown",method="unknown"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rpc_server_calls_in_flight{service="unknown",method="unknown"} 0"#),
            "{text}"
        );
    }
}
