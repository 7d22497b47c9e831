//! Prometheus metrics in the text exposition format, served over plain HTTP on a loopback
//! address: signatures per actor and backend, Sign latency, errors by gRPC code and method,
//! backend health, policy reloads, connections open and refused per listener.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{Code, Status};

use super::health::HealthProbe;

/// Upper bounds (seconds) of the Sign latency histogram's buckets.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    signs: BTreeMap<(String, String), u64>,
    latency: Histogram,
    errors: BTreeMap<(&'static str, String), u64>,
    reloads: BTreeMap<&'static str, u64>,
    open: BTreeMap<&'static str, u64>,
    refused: BTreeMap<(&'static str, &'static str), u64>,
    accept_errors: BTreeMap<&'static str, u64>,
}

/// The daemon's counters. Cheap to update; rendered on each scrape.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// A fleet node's metrics (`crate::fleet::metrics`), rendered with these.
    fleet: Option<Arc<crate::fleet::metrics::FleetMetrics>>,
}

impl Metrics {
    /// The metrics of a fleet node.
    pub fn with_fleet(fleet: Arc<crate::fleet::metrics::FleetMetrics>) -> Self {
        Metrics {
            fleet: Some(fleet),
            ..Default::default()
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A receipt signed for `actor` by a key in `backend`, `elapsed` after the request came.
    pub fn signed(&self, actor: &str, backend: &str, elapsed: Duration) {
        self.with(|m| {
            *m.signs
                .entry((actor.to_owned(), backend.to_owned()))
                .or_default() += 1;
            let seconds = elapsed.as_secs_f64();
            let h = &mut m.latency;
            for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *count += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        });
    }

    /// A request to `method` that failed with `status`.
    pub fn failed(&self, method: &'static str, status: &Status) {
        let code = code_name(status.code());
        self.with(|m| *m.errors.entry((method, code)).or_default() += 1);
    }

    /// Counts a failure of `result`, if it is one, and passes it on.
    pub fn observe<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.failed(method, status);
        }
        result
    }

    /// A policy reload that was `"applied"` or `"rejected"`.
    pub fn reload(&self, outcome: &'static str) {
        self.with(|m| *m.reloads.entry(outcome).or_default() += 1);
    }

    /// A connection opened (`true`) or closed on `listener`.
    pub fn connection(&self, listener: &'static str, opened: bool) {
        self.with(|m| {
            let open = m.open.entry(listener).or_default();
            *open = if opened {
                *open + 1
            } else {
                open.saturating_sub(1)
            };
        });
    }

    /// A connection refused on `listener` because `limit` (`listener`, `caller`) was reached.
    pub fn refused(&self, listener: &'static str, limit: &'static str) {
        self.with(|m| *m.refused.entry((listener, limit)).or_default() += 1);
    }

    /// An accept on `listener` that failed (e.g. at the open-files limit).
    pub fn accept_failed(&self, listener: &'static str) {
        self.with(|m| *m.accept_errors.entry(listener).or_default() += 1);
    }

    fn render_connections(m: &Inner, out: &mut String) {
        out.push_str(
            "# HELP actseal_connections_open Open gRPC connections, by listener.\n\
             # TYPE actseal_connections_open gauge\n",
        );
        for (listener, n) in &m.open {
            let _ = writeln!(
                out,
                "actseal_connections_open{{listener=\"{listener}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP actseal_connections_refused_total Connections closed at accept, by listener and the limit reached.\n\
             # TYPE actseal_connections_refused_total counter\n",
        );
        for ((listener, limit), n) in &m.refused {
            let _ = writeln!(
                out,
                "actseal_connections_refused_total{{listener=\"{listener}\",limit=\"{limit}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP actseal_accept_errors_total Failed accepts (the listener backs off), by listener.\n\
             # TYPE actseal_accept_errors_total counter\n",
        );
        for (listener, n) in &m.accept_errors {
            let _ = writeln!(
                out,
                "actseal_accept_errors_total{{listener=\"{listener}\"}} {n}"
            );
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self, backend_up: bool) -> String {
        let mut out = String::new();
        self.with(|m| {
            Self::render_connections(m, &mut out);
            out.push_str(
                "# HELP actseal_signs_total Receipts signed and stored, by actor and backend.\n\
                 # TYPE actseal_signs_total counter\n",
            );
            for ((actor, backend), n) in &m.signs {
                let _ = writeln!(
                    out,
                    "actseal_signs_total{{actor=\"{}\",backend=\"{}\"}} {n}",
                    escape(actor),
                    escape(backend)
                );
            }
            out.push_str(
                "# HELP actseal_sign_duration_seconds Time from a Sign request's arrival to its stored receipt.\n\
                 # TYPE actseal_sign_duration_seconds histogram\n",
            );
            let h = &m.latency;
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "actseal_sign_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "actseal_sign_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 actseal_sign_duration_seconds_sum {}\n\
                 actseal_sign_duration_seconds_count {}",
                h.count, h.sum, h.count
            );
            out.push_str(
                "# HELP actseal_request_errors_total Failed gRPC requests, by method and status code.\n\
                 # TYPE actseal_request_errors_total counter\n",
            );
            for ((method, code), n) in &m.errors {
                let _ = writeln!(
                    out,
                    "actseal_request_errors_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
            out.push_str(
                "# HELP actseal_policy_reloads_total Policy reloads (SIGHUP), by outcome.\n\
                 # TYPE actseal_policy_reloads_total counter\n",
            );
            for outcome in ["applied", "rejected"] {
                let n = m.reloads.get(outcome).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "actseal_policy_reloads_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        });
        let _ = writeln!(
            out,
            "# HELP actseal_backend_up Whether the signing backend answers (1) or not (0).\n\
             # TYPE actseal_backend_up gauge\n\
             actseal_backend_up {}",
            u8::from(backend_up)
        );
        if let Some(fleet) = &self.fleet {
            fleet.render(&mut out);
        }
        out
    }
}

/// `PermissionDenied`, `Unavailable`, …: the names gRPC libraries use in metrics.
fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// A label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

/// Serves `GET /metrics` until the daemon stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<HealthProbe>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let _ = answer(stream, &metrics, &health).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &HealthProbe,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if request.len() > MAX_REQUEST {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            request.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let complete = matches!(head, Ok(Ok(true)));
    let line = String::from_utf8_lossy(&request);
    let mut words = line.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = if !complete {
        ("400 Bad Request", "bad request\n".to_owned())
    } else if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "only GET\n".to_owned())
    } else if path != "/metrics" {
        ("404 Not Found", "metrics are at /metrics\n".to_owned())
    } else {
        let up = health.check().await.is_ok();
        ("200 OK", metrics.render(up))
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.signed("spiffe://a/\"x\"", "pkcs11", Duration::from_millis(3));
        m.signed("spiffe://a/\"x\"", "pkcs11", Duration::from_millis(30));
        m.failed("Sign", &Status::permission_denied("no"));
        m.reload("rejected");
        let text = m.render(true);
        assert!(
            text.contains(
                "actseal_signs_total{actor=\"spiffe://a/\\\"x\\\"\",backend=\"pkcs11\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("actseal_sign_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("actseal_sign_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("actseal_sign_duration_seconds_count 2"));
        assert!(
            text.contains(
                "actseal_request_errors_total{method=\"Sign\",code=\"PermissionDenied\"} 1"
            )
        );
        assert!(text.contains("actseal_policy_reloads_total{outcome=\"rejected\"} 1"));
        assert!(text.contains("actseal_backend_up 1"));
        assert!(m.render(false).contains("actseal_backend_up 0"));
    }
}
