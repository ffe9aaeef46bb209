//! The HTTP server for `--metrics-addr`: `GET /metrics` and `GET /healthz`.
//!
//! tiny_http, on a thread of its own: the event loop that drains the ring
//! buffer is single-threaded, and a server on it (hyper on tokio) would
//! share that thread with the drain, so a scrape's encoding would delay it.
//! Scrapes are a few a minute; a blocking server with no async machinery is
//! all they need.

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use tiny_http::{Header, Method, Request, Response, Server};

use super::{Health, Metrics, STALE_AFTER};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("starting the metrics server thread: {0}")]
    Thread(std::io::Error),
}

/// The running server; [`MetricsServer::finish`] stops it.
pub struct MetricsServer {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (before anything is attached, so that a port in
    /// use fails the start at once) and serves from a thread.
    pub fn spawn(addr: SocketAddr, metrics: Metrics) -> Result<Self, ServerError> {
        let server = Server::http(addr).map_err(|e| ServerError::Bind {
            addr,
            message: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn({
                let server = Arc::clone(&server);
                move || serve(&server, &metrics)
            })
            .map_err(ServerError::Thread)?;
        Ok(Self {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens (with the port the kernel chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn finish(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the metrics server thread panicked");
        }
    }
}

fn serve(server: &Server, metrics: &Metrics) {
    let health = metrics.health();
    for request in server.incoming_requests() {
        if let Err(error) = answer(request, metrics, &health) {
            log::debug!("answering a metrics request: {error}");
        }
    }
}

fn answer(request: Request, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let path = request.url().split('?').next().unwrap_or_default();
    if !matches!(request.method(), Method::Get | Method::Head) {
        return request.respond(text(405, "only GET\n".to_string()));
    }
    match path {
        "/metrics" => {
            // Prometheus asks for OpenMetrics first; curl and promtool get
            // the classic text format.
            let openmetrics = request.headers().iter().any(|h| {
                h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
            });
            let (content_type, body) = match metrics.encode(openmetrics) {
                Ok(body) if openmetrics => (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Ok(body) => (
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body,
                ),
                Err(_) => return request.respond(text(500, "encoding failed\n".to_string())),
            };
            request.respond(with_content_type(text(200, body), content_type))
        }
        "/healthz" => match health.check() {
            Ok(()) => request.respond(text(200, "ok\n".to_string())),
            Err(problem) => request.respond(text(
                503,
                format!("{problem} (unhealthy after {} s)\n", STALE_AFTER.as_secs()),
            )),
        },
        _ => request.respond(text(404, "/metrics or /healthz\n".to_string())),
    }
}

fn text(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    // from_string sets `Content-Type: text/plain; charset=UTF-8`.
    Response::from_string(body).with_status_code(status)
}

fn with_content_type(
    response: Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    // tiny_http refuses only non-ASCII bytes, and the types are constants.
    match Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}
