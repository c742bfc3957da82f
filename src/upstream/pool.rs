//! HTTP/1.1 to the national database over at most N keep-alive connections
//! (`upstream.http1_connections`). A query takes an idle connection, opens
//! one while fewer than N exist, or waits until one comes back; a
//! connection whose exchange did not finish (a timeout, an error) is closed,
//! never reused. Bounded by construction: a connection is either idle in
//! the pool or held by the query that holds one of the N permits.
//!
//! Failures are told by a fixed text (no peer's words reach a log).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

pub struct Http1Pool {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    /// The `host` header of every request (HTTP/1.1 sends the path alone).
    authority: HeaderValue,
    connect_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Http1Pool {
    pub fn new(
        mut tls: rustls::ClientConfig,
        base: &Uri,
        connections: NonZeroUsize,
        connect_timeout: Duration,
    ) -> anyhow::Result<Http1Pool> {
        let authority = base
            .authority()
            .ok_or_else(|| anyhow::anyhow!("the address has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| anyhow::anyhow!("'{host}' is not a host name or an IP address"))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Http1Pool {
            tls: TlsConnector::from(Arc::new(tls)),
            server_name,
            port: authority.port_u16().unwrap_or(443),
            authority: HeaderValue::from_str(authority.as_str())?,
            host,
            connect_timeout,
            permits: Semaphore::new(connections.get()),
            idle: Mutex::new(Vec::with_capacity(connections.get())),
        })
    }

    /// Sends `req` (with an absolute URI) and reads at most `limit` bytes
    /// of the answer.
    pub async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), &'static str> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "connection pool closed")?;
        let (mut parts, body) = req.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|p| Uri::from(p.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        parts.headers.insert(http::header::HOST, self.authority.clone());
        let mut sender = self.ready_connection().await?;
        let resp = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|_| "connection failed")?;
        let status = resp.status();
        let bytes = read_limited(resp.into_body(), limit).await?;
        // The answer was read to its end: the connection may carry the next.
        if !sender.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        }
        Ok((status, bytes))
    }

    /// An idle connection that is still open, or a new one.
    async fn ready_connection(&self) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(|_| "connection failed")?;
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        let cannot = |_| "cannot connect";
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| "cannot connect")?
        .map_err(cannot)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(cannot)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|_| "cannot connect")?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "national database connection ended");
            }
        });
        Ok(sender)
    }
}

/// An answer's body, refused beyond `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, &'static str>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    Ok(http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| "answer too large or cut off")?
        .to_bytes())
}
