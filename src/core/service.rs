//! The boxed service and future every weft layer returns, so stacks are
//! erased once per layer and never nest into deep generic types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::body::Body;
use super::error::ProxyError;

pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// A type-erased, always-ready service whose clone is a reference-count
/// bump: the proxy and the retry layer clone the service of every request
/// (tower's `call` takes `&mut self`), and tower's `BoxCloneSyncService`
/// paid a heap allocation for each clone, at every boxed edge.
#[derive(Clone)]
pub struct HttpService(Arc<dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync>);

impl HttpService {
    /// Erases `service`, whose future is already boxed (every weft layer's
    /// is), so nothing is boxed twice. It must never apply backpressure
    /// through `poll_ready`: weft's layers reject in `call` instead.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future = ResponseFuture>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Self(Arc::new(move |req| service.clone().call(req)))
    }

    /// [`HttpService::new`] for a service with any future (boxed here).
    pub fn boxing<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self(Arc::new(move |req| Box::pin(service.clone().call(req))))
    }
}

impl Service<Request<Body>> for HttpService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        (self.0)(req)
    }
}
