//! Plumbing for [`super::faultproxy`]: a listener whose connections can be
//! killed from a handler (to drop a request unanswered), header helpers, and
//! the body transformations behind the body faults.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Where and how to forward.
pub(super) struct Upstream {
    pub(super) client: reqwest::Client,
    pub(super) base: url::Url,
    /// `scheme://host:port` of upstream and of the proxy, for header rewriting.
    pub(super) origin: String,
    pub(super) proxy_origin: String,
    /// Response body bytes handed to clients.
    pub(super) bytes_sent: Arc<std::sync::atomic::AtomicU64>,
}

/// What to do to a forwarded response body.
pub(super) enum BodyFault {
    None,
    Truncate(usize),
    Corrupt,
}

/// Forwards `req` upstream and streams the answer back, applying `fault` to
/// the body and counting body bytes sent.
pub(super) async fn forward(up_: &Upstream, req: Request, fault: BodyFault) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = match up_.base.join(pq) {
        Ok(u) => u,
        Err(e) => return bad_gateway(format!("bad path {pq}: {e}")),
    };
    let mut rb = up_.client.request(parts.method.clone(), url);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            rb = rb.header(k, v);
        }
    }
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        rb = rb.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let up = match rb.send().await {
        Ok(r) => r,
        Err(e) => return bad_gateway(format!("upstream: {e}")),
    };

    let mut headers = HeaderMap::new();
    for (k, v) in up.headers() {
        if hop_by_hop(k) {
            continue;
        }
        let v = if k == header::LOCATION || k == header::WWW_AUTHENTICATE {
            rewrite(v, &up_.origin, &up_.proxy_origin)
        } else {
            v.clone()
        };
        headers.append(k.clone(), v);
    }
    let status = up.status();
    let body = if parts.method == Method::HEAD {
        // No body; hyper still sends upstream's Content-Length for HEAD.
        Body::empty()
    } else {
        let up_stream: BoxStream<'static, io::Result<Bytes>> =
            up.bytes_stream().map_err(io::Error::other).boxed();
        let s = match fault {
            BodyFault::Truncate(after) => truncate(up_stream, after),
            BodyFault::Corrupt => corrupt(up_stream).await,
            BodyFault::None => up_stream,
        };
        let counter = up_.bytes_sent.clone();
        Body::from_stream(s.inspect_ok(move |b| {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        }))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// An injected error answer (no body for HEAD).
pub(super) fn status_response(
    method: &Method,
    code: u16,
    retry_after: Option<u64>,
) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(format!(
            r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected fault: HTTP {code}"}}]}}"#
        ))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Hop-by-hop headers that must not be forwarded.
pub(super) fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

pub(super) fn rewrite(v: &HeaderValue, from: &str, to: &str) -> HeaderValue {
    match v.to_str() {
        Ok(s) if s.contains(from) => {
            HeaderValue::from_str(&s.replace(from, to)).unwrap_or_else(|_| v.clone())
        }
        _ => v.clone(),
    }
}

pub(super) fn bad_gateway(msg: String) -> Response<Body> {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// Per-connection flag; once set, the connection's reads and writes fail.
#[derive(Clone, Debug)]
pub(super) struct KillSwitch(pub(super) Arc<AtomicBool>);

pub(super) struct KillableListener(pub(super) TcpListener);

pub(super) struct KillableIo {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableIo, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    return (KillableIo { inner, kill }, addr);
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        KillSwitch(stream.io().kill.clone())
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "injected connection drop")
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Passes `after` bytes, then (after a pause so hyper flushes what it has)
/// fails the body so the connection is aborted mid-body.
pub(super) fn truncate(
    up: BoxStream<'static, io::Result<Bytes>>,
    after: usize,
) -> BoxStream<'static, io::Result<Bytes>> {
    stream::unfold(
        (up, 0usize, false),
        move |(mut up, sent, done)| async move {
            if done {
                return None;
            }
            if sent >= after {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let e = io::Error::other("injected truncation");
                return Some((Err(e), (up, sent, true)));
            }
            match up.next().await {
                None => None,
                Some(Err(e)) => Some((Err(e), (up, sent, true))),
                Some(Ok(mut b)) => {
                    b.truncate(after - sent);
                    let n = b.len();
                    Some((Ok(b), (up, sent + n, false)))
                }
            }
        },
    )
    .boxed()
}

/// Buffers the body and flips the middle byte.
pub(super) async fn corrupt(
    up: BoxStream<'static, io::Result<Bytes>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    let chunks: Vec<io::Result<Bytes>> = up.collect().await;
    let mut buf = Vec::new();
    for c in chunks {
        match c {
            Ok(b) => buf.extend_from_slice(&b),
            Err(e) => return stream::once(async { Err(e) }).boxed(),
        }
    }
    if !buf.is_empty() {
        let mid = buf.len() / 2;
        buf[mid] ^= 0xff;
    }
    stream::once(async move { Ok(Bytes::from(buf)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, io::Result<Bytes>> {
        let v: Vec<io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(v).boxed()
    }

    #[tokio::test]
    async fn truncate_cuts_then_errors() {
        let out: Vec<io::Result<Bytes>> = truncate(chunks(&[b"abcd", b"efgh"]), 6).collect().await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().unwrap(), &Bytes::from_static(b"abcd"));
        assert_eq!(out[1].as_ref().unwrap(), &Bytes::from_static(b"ef"));
        assert!(out[2].is_err());
        // Shorter than the cut: passes through whole, no error.
        let out: Vec<io::Result<Bytes>> = truncate(chunks(&[b"ab"]), 6).collect().await;
        assert_eq!(out.len(), 1);
        assert!(out[0].is_ok());
    }

    #[tokio::test]
    async fn corrupt_flips_middle_byte() {
        let out: Vec<io::Result<Bytes>> = corrupt(chunks(&[b"aaa", b"aa"])).await.collect().await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].as_ref().unwrap().as_ref(),
            &[b'a', b'a', !b'a', b'a', b'a']
        );
        let out: Vec<io::Result<Bytes>> = corrupt(chunks(&[])).await.collect().await;
        assert!(out[0].as_ref().unwrap().is_empty());
    }

    #[test]
    fn headers() {
        let v = HeaderValue::from_static("http://127.0.0.1:1/v2/x?a=b");
        let r = rewrite(&v, "http://127.0.0.1:1", "http://127.0.0.1:2");
        assert_eq!(r, "http://127.0.0.1:2/v2/x?a=b");
        assert_eq!(rewrite(&v, "http://other", "x"), v);
        assert!(hop_by_hop(&HeaderName::from_static("transfer-encoding")));
        assert!(!hop_by_hop(&HeaderName::from_static("content-length")));
        assert_eq!(bad_gateway("x".into()).status(), 502);
    }
}
