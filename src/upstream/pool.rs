//! HTTP/1.1 to the national database over at most N keep-alive connections
//! (`upstream.http1_connections`). A query takes an idle connection, opens
//! one while fewer than N exist, or waits until one comes back; a
//! connection whose exchange did not finish (a timeout, an error) is closed,
//! never reused, nor is one idle for longer than [`IDLE`] (a firewall
//! between the province and the national database may have forgotten it).
//! Bounded by construction: a connection is either idle in the pool or
//! held by the query that holds one of the N permits.
//!
//! Failures are told by a fixed text (no peer's words reach a log).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// How long a connection may wait idle in the pool and still be used (as
/// hyper's pooled client, for HTTP/2).
pub const IDLE: Duration = Duration::from_secs(60);

pub struct Http1Pool {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    /// The `host` header of every request (HTTP/1.1 sends the path alone).
    authority: HeaderValue,
    connect_timeout: Duration,
    permits: Semaphore,
    /// How long a connection may wait idle and still be used ([`IDLE`]).
    idle_limit: Duration,
    /// Idle connections, each with when it went idle; the newest last.
    idle: Mutex<Vec<(SendRequest<Full<Bytes>>, Instant)>>,
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
            idle_limit: IDLE,
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
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((sender, Instant::now()));
        }
        Ok((status, bytes))
    }

    /// The most recently used idle connection that is still open and has
    /// not been idle too long, or a new one.
    async fn ready_connection(&self) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                // The oldest are at the front: drop those idle too long.
                idle.retain(|(_, since)| since.elapsed() < self.idle_limit);
                idle.pop()
            };
            let Some((mut sender, _)) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(|_| "connection failed")?;
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        fn cannot<E>(_: E) -> &'static str {
            "cannot connect"
        }
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(cannot)?
            .map_err(cannot)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(cannot)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(cannot)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, SimSettings, Simulator, PATH_LOOKUP};
    use crate::tls::pki;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_is_reused_while_fresh_and_replaced_once_idle_too_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pki::init(dir.path(), &[], false).expect("pki");
        let l = &p.layout;
        let settings = SimSettings {
            seed: 3,
            population: 500,
            province: 79,
            faults: Faults::default(),
            legacy_address_share: 0.0,
        };
        let running = Simulator::spawn(&settings, l).await.expect("simulator");
        let tls = crate::tls::mutual_client_config(
            &l.national_ca_cert(),
            &l.upstream_client_cert(),
            &l.upstream_client_key(),
            &[],
        )
        .expect("tls");
        let one = NonZeroUsize::new(1).expect("one");
        let mut pool = Http1Pool::new(tls, &running.url(), one, Duration::from_secs(2)).expect("pool");
        pool.idle_limit = Duration::from_millis(300);
        let id = running
            .sim
            .population()
            .citizen(7)
            .personal_id()
            .as_str()
            .to_owned();
        let url: Uri = format!("https://{}{PATH_LOOKUP}", running.addr)
            .parse()
            .expect("url");
        let ask = || {
            let body = serde_json::json!({
                "MaCanBo": "o", "MaDVC": "T", "MaTichHop": "T", "MaYeuCau": "r", "SoDinhDanh": id,
            });
            Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request")
        };
        for _ in 0..3 {
            let (status, _) = pool.exchange(ask(), 1 << 20).await.expect("answer");
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(
            running.sim.connections().len(),
            1,
            "three queries, one connection"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, _) = pool.exchange(ask(), 1 << 20).await.expect("answer");
        assert_eq!(status, StatusCode::OK);
        let seen = running.sim.connections();
        assert_eq!(seen.len(), 2, "the idle connection is not reused: {seen:?}");
        assert!(seen.iter().all(|(_, v)| *v == http::Version::HTTP_11));
    }
}
