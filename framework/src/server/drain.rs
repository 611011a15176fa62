//! Ends server-streaming calls cleanly when the server drains.
//!
//! Graceful shutdown waits for in-flight calls. Unary calls end by
//! themselves, but a stream such as a health `Watch` or an order `WatchStatus`
//! may never end, and would hold shutdown until the drain timeout. Once the
//! drain starts, this layer lets every message already produced through, then
//! closes each such stream with `UNAVAILABLE`, which tells the client to
//! reconnect, to another instance.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower_layer::Layer;
use tower_service::Service;

use crate::protocol::per_method::PerMethod;
use crate::protocol::{GRPC_MESSAGE, GRPC_STATUS};

/// Closes the streams of `paths` when `token` is cancelled.
#[derive(Debug, Clone)]
pub(crate) struct DrainLayer {
    /// Whether a path is a server stream's.
    streaming: Arc<PerMethod<bool>>,
    token: CancellationToken,
}

impl DrainLayer {
    pub(crate) fn new(
        streaming_paths: impl IntoIterator<Item = &'static str>,
        token: CancellationToken,
    ) -> Self {
        let streaming = PerMethod::new(streaming_paths.into_iter().map(|p| (p, true)), false);
        DrainLayer { streaming: Arc::new(streaming), token }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain { inner, layer: self.clone() }
    }
}

/// The service made by [`DrainLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Drain<S> {
    inner: S,
    layer: DrainLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let token = self.layer.streaming.get(req.uri().path()).then(|| self.layer.token.clone());
        DrainFuture { inner: self.inner.call(req), token }
    }
}

pin_project! {
    /// Response future of [`Drain`].
    pub(crate) struct DrainFuture<F> {
        #[pin]
        inner: F,
        token: Option<CancellationToken>,
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let drained = this.token.take().map(|t| Box::pin(t.cancelled_owned()));
        Poll::Ready(Ok(response.map(|inner| DrainBody { inner, drained, done: false })))
    }
}

pin_project! {
    /// Response body of [`Drain`].
    pub(crate) struct DrainBody<B> {
        #[pin]
        inner: B,
        drained: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        done: bool,
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let drained = this.drained.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if !drained {
            return Poll::Pending;
        }
        *this.done = true;
        let mut trailers = HeaderMap::with_capacity(2);
        trailers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("14"));
        trailers.insert(
            GRPC_MESSAGE.clone(),
            HeaderValue::from_static("server is shutting down; reconnect to another instance"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    use super::*;

    /// A handler whose response sends one message, then stays open.
    fn open_stream() -> impl Service<
        Request<()>,
        Response = Response<impl Body<Data = Bytes, Error = Infallible>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        tower::service_fn(|_req: Request<()>| async {
            let first =
                futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"m")))]);
            let body =
                StreamBody::new(futures_util::StreamExt::chain(first, futures_util::stream::pending()));
            Ok(Response::new(body))
        })
    }

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_open_streams_after_what_they_sent_and_leaves_unary_calls() {
        let token = CancellationToken::new();
        let layer = DrainLayer::new(["/pkg.S/Watch"], token.clone());
        let service = layer.layer(open_stream());
        let mut stream = service.clone().oneshot(request("/pkg.S/Watch")).await.unwrap().into_body();
        let mut unary = service.oneshot(request("/pkg.S/Get")).await.unwrap().into_body();

        let first = stream.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "m", "what was produced goes first");
        token.cancel();
        let last = stream.frame().await.unwrap().unwrap();
        let trailers = last.into_trailers().unwrap();
        assert_eq!(trailers[&GRPC_STATUS], "14", "UNAVAILABLE: reconnect elsewhere");
        assert!(trailers[&GRPC_MESSAGE].to_str().unwrap().contains("shutting down"));
        assert!(stream.frame().await.is_none() && stream.is_end_stream());

        // A path that is not a server stream is never cut.
        assert_eq!(unary.frame().await.unwrap().unwrap().into_data().unwrap(), "m");
        let next = tokio::time::timeout(Duration::from_secs(60), unary.frame()).await;
        assert!(next.is_err(), "the unary body must stay as its handler left it");
    }
}
