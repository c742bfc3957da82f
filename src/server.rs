//! Accepting connections for every HTTP listener popgate runs (gateway, ops,
//! simulator): the connection cap, the TLS handshake deadline, HTTP/1.1 and
//! HTTP/2 on one port (ALPN), header limits and timeouts with hyper's timer
//! actually set, and graceful shutdown with a drain deadline.
//!
//! This module knows nothing about routes; a listener hands each request and
//! the peer's identity to a handler function.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::token::CertThumbprint;

/// Response body type of every handler: a whole buffer or a stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body fed chunk by chunk from a channel (for exports); it ends when the
/// sender is dropped.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it, buffering at most `depth` chunks.
    pub fn new(depth: usize) -> (ChannelBody, tokio::sync::mpsc::Sender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth);
        (ChannelBody { rx }, tx)
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE: usize = 1_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_HEADER_COUNT: usize = 64;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const DEFAULT_MAX_PENDING_RESET_STREAMS: usize = 20;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds applied to every connection of a listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Connections one client certificate may hold at once.
    pub max_connections_per_certificate: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// HTTP/1.1 read buffer, which bounds the request head (431 beyond it).
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: usize,
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_certificate: DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_header_count: DEFAULT_MAX_HEADER_COUNT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_pending_reset_streams: DEFAULT_MAX_PENDING_RESET_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Who is at the other end of a connection: what the requests need of its
/// certificate, read once when it connected. The certificate itself is not
/// kept (rustls holds it for the connection already).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 of the leaf client certificate, already verified by rustls.
    pub client_thumbprint: Option<CertThumbprint>,
    /// The certificate's URI SANs.
    pub client_uris: Vec<String>,
    /// What a CRL would name the certificate by.
    pub client_id: Option<crate::tls::revocation::CertId>,
}

impl Peer {
    pub fn new(addr: SocketAddr, client_cert: Option<&CertificateDer<'_>>) -> Peer {
        Peer {
            addr,
            client_thumbprint: client_cert.map(CertThumbprint::of),
            client_uris: client_cert.map(crate::auth::certificate_uris).unwrap_or_default(),
            client_id: client_cert.and_then(crate::tls::revocation::CertId::of),
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then drains.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<crate::tls::ActiveServerTls>,
    limits: ServerLimits,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // The current TLS config is taken for each new connection, so a reload
    // applies to every connection accepted after it.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_certificate = Arc::new(CertificateSlots::default());
    let graceful = GracefulShutdown::new();
    let limits = Arc::new(limits);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(limit = limits.max_connections, "connection cap reached; refusing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.load().config.clone()));
        let handler = handler.clone();
        let limits = limits.clone();
        let per_certificate = per_certificate.clone();
        let watcher = graceful.watcher();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The set-up happens in the arms of this match, so that what it
            // moves into the connection's future (the TLS stream, with
            // rustls' session inline) is not also laid out in this task for
            // as long as the connection lives: an idle connection costs its
            // boxed future and little else.
            let (conn, _slot): (ConnectionFuture, _) = match acceptor {
                Some(acceptor) => {
                    let accepted = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                    let stream = match accepted {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%addr, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let peer = Peer::new(
                        addr,
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first()),
                    );
                    // One compromised app must not take every connection.
                    let slot = match peer.client_thumbprint {
                        Some(cert) => {
                            match per_certificate.take(cert, limits.max_connections_per_certificate) {
                                Some(slot) => Some(slot),
                                None => {
                                    tracing::warn!(%addr, "per-certificate connection cap reached; refusing");
                                    return;
                                }
                            }
                        }
                        None => None,
                    };
                    let peer = Arc::new(peer);
                    // Boxed as well: an async fn keeps its argument's slot
                    // beside the connection it was moved into.
                    let mut stream = Box::new(stream);
                    let conn: ConnectionFuture = Box::pin(async move {
                        // Until its first request, a connection holds its
                        // TLS session and this future, not the HTTP state
                        // machine (about 2 KiB), which is allocated when
                        // bytes arrive; one that sends none within the
                        // header deadline is closed, as nginx's
                        // `client_header_timeout` does.
                        if !first_bytes(&mut stream, limits.header_read_timeout, &mut shutdown).await {
                            return Ok(());
                        }
                        let io = TokioIo::new(stream);
                        Box::pin(serve_connection(io, peer, handler, limits, watcher)).await
                    });
                    (conn, slot)
                }
                None => {
                    let peer = Arc::new(Peer::new(addr, None));
                    let io = TokioIo::new(tcp);
                    (
                        Box::pin(serve_connection(io, peer, handler, limits, watcher)),
                        None,
                    )
                }
            };
            if let Err(error) = conn.await {
                tracing::debug!(%addr, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with connections still open");
    }
}

/// Open connections per client certificate (by SHA-256 of its DER).
#[derive(Default)]
struct CertificateSlots {
    open: std::sync::Mutex<std::collections::HashMap<CertThumbprint, usize>>,
}

/// Holds one of a certificate's connection slots until dropped.
struct CertificateSlot {
    slots: Arc<CertificateSlots>,
    key: CertThumbprint,
}

impl CertificateSlots {
    fn take(self: &Arc<Self>, key: CertThumbprint, cap: usize) -> Option<CertificateSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(CertificateSlot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for CertificateSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Waits until a TLS connection has something to read: records on the
/// socket, or a request that came with the handshake and is decrypted
/// already. False when it stays silent for `deadline` or shutdown begins
/// (the connection is then closed), or when what it sent is not TLS.
async fn first_bytes(
    stream: &mut TlsStream<TcpStream>,
    deadline: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    match stream.get_mut().1.process_new_packets() {
        Ok(state) if state.plaintext_bytes_to_read() > 0 => return true,
        Ok(_) => {}
        Err(_) => return false,
    }
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        readable = tokio::time::timeout(deadline, stream.get_ref().0.readable()) => {
            matches!(readable, Ok(Ok(())))
        }
        _ = shutdown.changed() => false,
    }
}

/// A connection's HTTP state machine, boxed.
type ConnectionFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>>;

/// One connection's HTTP state machine, HTTP/1.1 or h2 as negotiated.
async fn serve_connection<I, H, F>(
    io: TokioIo<I>,
    peer: Arc<Peer>,
    handler: H,
    limits: Arc<ServerLimits>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_header_count);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(Duration::from_secs(20));
    watcher.watch(builder.serve_connection(io, service)).await
}

/// A JSON response with the given status.
pub fn json_response(status: http::StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes_response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A response whose body is already-serialised JSON.
pub fn json_bytes_response(status: http::StatusCode, body: Vec<u8>) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads a whole request body, refusing more than `limit` bytes. The
/// declared content-length is checked before anything is buffered.
///
/// Over HTTP/2 a refused body is read on and dropped in the background, up
/// to [`REFUSED_BODY_DRAIN_BYTES`] or [`REFUSED_BODY_DRAIN_TIME`]: a client
/// still uploading then finishes its request and reads the 413 (curl before
/// 8.x reports a stream error when the stream is reset under its upload).
/// Past either bound the stream is reset with `NO_ERROR` after the complete
/// response, as RFC 9113 §8.1 allows. (HTTP/1.1 closes the connection
/// instead, as hyper does for an unread body.)
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let drain_refused = req.version() == http::Version::HTTP_2;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let refuse = |body: Incoming| {
        if drain_refused {
            tokio::spawn(drain_refused_body(body));
        }
        Err(BodyError::TooLarge)
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return refuse(body);
    }
    // One chunk (the usual case) is returned as it came, without a copy.
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Io)?.into_data() else {
            continue; // trailers carry nothing we read
        };
        let had = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if had + data.len() > limit {
            return refuse(body);
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}

/// How much of a refused HTTP/2 body is read and dropped at most.
pub const REFUSED_BODY_DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// How long a refused HTTP/2 body is read and dropped at most.
pub const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(5);

async fn drain_refused_body(mut body: Incoming) {
    use http_body_util::BodyExt;
    let mut left = REFUSED_BODY_DRAIN_BYTES;
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n >= left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body too large")]
    TooLarge,
    #[error("request body could not be read")]
    Io,
}

/// Parses an `application/x-www-form-urlencoded` text (a query or a form).
pub fn parse_form<T: serde::de::DeserializeOwned + Default>(text: &[u8]) -> T {
    let pairs: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), serde_json::Value::from(v.into_owned())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(pairs)).unwrap_or_default()
}
