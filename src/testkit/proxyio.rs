//! Plumbing for [`super::faultproxy`]: a listener whose connections can be
//! killed from a handler (to drop a request unanswered), header helpers,
//! the body transformations behind the body faults, and the bandwidth
//! pacer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::watch;

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
    Hold(Hold),
}

/// Forwards `req` upstream and streams the answer back, applying `fault` to
/// the body, pacing it with `pacer` and counting body bytes sent.
pub(super) async fn forward(
    up_: &Upstream,
    req: Request,
    fault: BodyFault,
    pacer: Option<Arc<Pacer>>,
) -> Response<Body> {
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
            BodyFault::Hold(h) => hold(up_stream, h),
            BodyFault::None => up_stream,
        };
        let s = match pacer {
            Some(p) => paced(s, p),
            None => s,
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

/// Accepts connections whose I/O can be killed; while `refuse` is set it
/// resets each new connection at once instead (counted in `refused`).
pub(super) struct KillableListener {
    pub(super) inner: TcpListener,
    pub(super) refuse: Arc<AtomicBool>,
    pub(super) refused: Arc<std::sync::atomic::AtomicU64>,
}

pub(super) struct KillableIo {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((inner, _)) if self.refuse.load(Ordering::SeqCst) => {
                    // SO_LINGER 0: the close sends RST, as from a host that is down.
                    let _ = inner.set_zero_linger();
                    drop(inner);
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
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
        self.inner.local_addr()
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

/// A hand-shake point in a response body: once `after` bytes have passed,
/// [`Hold::reached`] resolves and the rest waits for [`Hold::release`].
#[derive(Clone)]
pub struct Hold(Arc<HoldState>);

struct HoldState {
    after: usize,
    reached: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Hold {
    pub fn new(after: usize) -> Self {
        Self(Arc::new(HoldState {
            after,
            reached: watch::Sender::new(false),
            released: watch::Sender::new(false),
        }))
    }

    /// Bytes let through before the body stops.
    pub fn after(&self) -> usize {
        self.0.after
    }

    /// Resolves once a body has passed `after` bytes and is held.
    pub async fn reached(&self) {
        let mut rx = self.0.reached.subscribe();
        // The sender lives in `self`: the channel cannot close.
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn is_reached(&self) -> bool {
        *self.0.reached.borrow()
    }

    /// Lets held (and later) bodies go on.
    pub fn release(&self) {
        self.0.released.send_replace(true);
    }

    pub(super) fn arrive(&self) {
        self.0.reached.send_replace(true);
    }

    pub(super) async fn wait_released(&self) {
        let mut rx = self.0.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hold(after {} bytes)", self.0.after)
    }
}

/// The same hand-shake (not an equal one).
impl PartialEq for Hold {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Hold {}

/// Passes `hold.after()` bytes, signals the hold and waits for its release,
/// then passes the rest.
pub(super) fn hold(
    up: BoxStream<'static, io::Result<Bytes>>,
    hold: Hold,
) -> BoxStream<'static, io::Result<Bytes>> {
    struct Held {
        up: BoxStream<'static, io::Result<Bytes>>,
        sent: usize,
        hold: Option<Hold>,
        /// The part of a chunk beyond the hold point.
        carry: Option<Bytes>,
    }
    let after = hold.after();
    let start = Held {
        up,
        sent: 0,
        hold: Some(hold),
        carry: None,
    };
    stream::unfold(start, move |mut s| async move {
        if s.sent >= after {
            if let Some(h) = s.hold.take() {
                h.arrive();
                h.wait_released().await;
            }
        }
        let next = match s.carry.take() {
            Some(b) => Ok(b),
            None => s.up.next().await?,
        };
        let mut b = match next {
            Ok(b) => b,
            Err(e) => return Some((Err(e), s)),
        };
        if s.hold.is_some() && s.sent + b.len() > after {
            s.carry = Some(b.split_off(after - s.sent));
        }
        s.sent += b.len();
        Some((Ok(b), s))
    })
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

/// Bytes per pacing step: small enough to keep the rate smooth.
const PACE_CHUNK: usize = 16 << 10;
/// Bytes may run ahead of the rate by this much time (absorbs timer slack).
const PACE_BURST: Duration = Duration::from_millis(10);

/// A bandwidth budget shared by every response body through one proxy,
/// like a node's link: a GCRA over bytes.
pub(super) struct Pacer {
    bytes_per_second: f64,
    /// When the bytes handed out so far would have finished at the rate.
    due: Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub(super) fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1) as f64,
            due: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes fit the rate.
    pub(super) async fn take(&self, n: usize) {
        let until = {
            let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let start = (*due).max(now);
            *due = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second);
            *due - PACE_BURST
        };
        tokio::time::sleep_until(until).await;
    }
}

/// `up` in steps of at most [`PACE_CHUNK`] bytes, each waiting for `pacer`.
fn paced(
    up: BoxStream<'static, io::Result<Bytes>>,
    pacer: Arc<Pacer>,
) -> BoxStream<'static, io::Result<Bytes>> {
    up.flat_map(|r| {
        let parts: Vec<io::Result<Bytes>> = match r {
            Ok(b) => (0..b.len())
                .step_by(PACE_CHUNK)
                .map(|i| Ok(b.slice(i..(i + PACE_CHUNK).min(b.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(parts)
    })
    .then(move |r| {
        let pacer = pacer.clone();
        async move {
            if let Ok(b) = &r {
                pacer.take(b.len()).await;
            }
            r
        }
    })
    .boxed()
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
    async fn hold_stops_at_the_point_until_released() {
        let h = Hold::new(6);
        let mut s = hold(chunks(&[b"abcd", b"efgh", b"ij"]), h.clone());
        assert_eq!(s.next().await.unwrap().unwrap(), &b"abcd"[..]);
        assert_eq!(s.next().await.unwrap().unwrap(), &b"ef"[..]);
        assert!(!h.is_reached());
        let mut next = Box::pin(s.next());
        // Held: the next chunk does not come until the release.
        assert!(futures::poll!(next.as_mut()).is_pending());
        h.reached().await;
        h.release();
        assert_eq!(next.await.unwrap().unwrap(), &b"gh"[..]);
        assert_eq!(s.next().await.unwrap().unwrap(), &b"ij"[..]);
        assert!(s.next().await.is_none());
        // Shorter than the hold point: passes whole, never held.
        let h = Hold::new(100);
        let out: Vec<_> = hold(chunks(&[b"ab"]), h.clone()).collect().await;
        assert_eq!(out.len(), 1);
        assert!(!h.is_reached());
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

    /// Paused time: the pacer's waits are exact, whatever the machine.
    #[tokio::test(start_paused = true)]
    async fn paced_bodies_share_one_rate_in_small_steps() {
        let pacer = Arc::new(Pacer::new(1 << 20));
        let body = |n: usize| -> BoxStream<'static, io::Result<Bytes>> {
            stream::iter(vec![Ok(Bytes::from(vec![7u8; n]))]).boxed()
        };
        let t = tokio::time::Instant::now();
        // Two bodies at once through one pacer: 1 MiB together.
        let (a, b) = tokio::join!(
            paced(body(512 << 10), pacer.clone()).collect::<Vec<_>>(),
            paced(body(512 << 10), pacer.clone()).collect::<Vec<_>>()
        );
        let elapsed = t.elapsed();
        for parts in [&a, &b] {
            assert_eq!(parts.len(), 32, "16 KiB steps");
            let total: usize = parts.iter().map(|p| p.as_ref().unwrap().len()).sum();
            assert_eq!(total, 512 << 10);
        }
        // 1 MiB at 1 MiB/s, less the 10 ms it may run ahead.
        assert_eq!(elapsed, Duration::from_millis(990));
        // Errors pass through unpaced.
        let failing: BoxStream<'static, io::Result<Bytes>> =
            stream::iter(vec![Err(io::Error::other("cut"))]).boxed();
        let out: Vec<_> = paced(failing, pacer).collect().await;
        assert!(out[0].is_err());
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
