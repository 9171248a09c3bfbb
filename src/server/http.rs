//! One HTTP/1.1 connection: keep-alive, a request size limit, a header and body timeout,
//! an idle timeout (a slow or half-open client holds a socket, never a worker thread), and
//! graceful shutdown.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::config::Limits;
use super::errors::ApiError;
use super::{Peer, Service};

/// How much of a too-large body is read and dropped before answering.
const DRAIN_LIMIT: usize = 16 << 20;

/// Milliseconds since `origin`, for activity stamps.
fn millis(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

/// The connection's socket, stamping each read and write so idleness can be measured.
struct Tracked<T> {
    inner: T,
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.store(millis(this.origin), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last.store(millis(this.origin), Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one connection until the client closes it, it idles out, or shutdown drains it.
pub async fn serve_connection<T>(
    io: T,
    svc: Arc<Service>,
    peer: Peer,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(Tracked { inner: io, origin, last: Arc::clone(&last) });
    let peer = Arc::new(peer);
    let flight = Arc::clone(&in_flight);
    let service = service_fn(move |req: Request<Incoming>| {
        let (svc, peer, flight) = (Arc::clone(&svc), Arc::clone(&peer), Arc::clone(&flight));
        async move {
            flight.fetch_add(1, Ordering::Relaxed);
            let response = handle(&svc, &peer, limits, req).await;
            flight.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let tick = Duration::from_secs(1).min(limits.idle_timeout);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::debug!("connection ended: {e}");
                }
                return;
            }
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(tick) => {
                let idle = millis(origin).saturating_sub(last.load(Ordering::Relaxed));
                if in_flight.load(Ordering::Relaxed) == 0 && idle >= limits.idle_timeout.as_millis() as u64 {
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}

async fn handle(
    svc: &Arc<Service>,
    peer: &Peer,
    limits: Limits,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let too_large = || ApiError {
        status: 413,
        code: "ValidationException",
        message: format!("the request body is larger than {} bytes", limits.max_request_bytes),
        audited: false,
    };
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let result = if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        // Read (and drop) a bounded amount first, so a client still sending sees the answer
        // instead of a reset.
        let _ = tokio::time::timeout(
            limits.header_timeout,
            Limited::new(body, DRAIN_LIMIT.max(limits.max_request_bytes)).collect(),
        )
        .await;
        Err(too_large())
    } else {
        match tokio::time::timeout(
            limits.header_timeout,
            Limited::new(body, limits.max_request_bytes).collect(),
        )
        .await
        {
            Err(_) => Err(ApiError {
                status: 408,
                code: "RequestTimeoutException",
                message: "the request body was not received in time".into(),
                audited: false,
            }),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(ApiError::client(
                "SerializationException",
                format!("the request body cannot be read: {e}"),
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    };
    let (status, body) = match result {
        // The web console, beside the JSON API.
        Ok(body) if super::console::is_console(&parts) => {
            return super::console::handle(svc, peer, &parts, body).await
        }
        Ok(body) => super::answer(svc, peer, &parts, &body).await,
        Err(e) => {
            svc.record_unaudited(peer, None, &parts, &e);
            svc.audit_committed().await;
            (e.status, e.body())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(id) = hyper::header::HeaderValue::from_str(&crate::kms::keyid::new_key_id()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}
