//! The listeners' own accept loops and connections, so that a caller allowed to connect
//! cannot take the daemon down: connection limits per listener and per caller (uid on the
//! Unix socket, IP address on TCP), a header timeout (accept to first complete request) and an
//! idle timeout (no request in flight), and back-off when accepting fails for want of file
//! descriptors instead of retrying at once (which spun a core at the open-files limit).
//! The limits on streams per connection are hyper's, set where the server is built.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream, unix::UCred},
    sync::mpsc,
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TlsConnectInfo};

use super::{authority::AnyAuthority, metrics::Metrics};
use crate::config::LimitsConfig;

/// `AsyncWrite` for a stream wrapper that passes writes straight to the stream in `$field`: the
/// wrappers only watch or rewrite what is read.
macro_rules! write_through {
    ($wrapper:ident, $field:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                    buf,
                )
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                )
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                )
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write_vectored(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                    bufs,
                )
            }

            fn is_write_vectored(&self) -> bool {
                tokio::io::AsyncWrite::is_write_vectored(&self.$field)
            }
        }
    };
}
pub(crate) use write_through;

/// File descriptors kept free of connections for the state, the token and the log.
const FD_RESERVE: u64 = 64;
/// The default connection limit never exceeds this, whatever the open-files limit.
const MAX_DEFAULT_CONNECTIONS: u64 = 4096;
/// First and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Repeated warnings (refusals, accept failures) are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits in force, from `server.limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_caller: usize,
    pub max_concurrent_streams: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The configured limits; without `max_connections`, the open-files limit less a reserve.
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            max_connections: config
                .max_connections
                .unwrap_or_else(default_max_connections),
            max_connections_per_caller: config.max_connections_per_caller,
            max_concurrent_streams: config.max_concurrent_streams,
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        }
    }
}

fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let budget = soft
        .saturating_sub(FD_RESERVE)
        .clamp(16, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(budget).unwrap_or(16)
}

/// Who is at the other end of a connection, as the kernel says.
#[derive(Debug, Clone)]
pub enum Peer {
    Unix(UCred),
    Tcp(SocketAddr),
}

/// What whom the per-caller limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CallerKey {
    Uid(u32),
    Ip(IpAddr),
}

impl Peer {
    fn key(&self) -> CallerKey {
        match self {
            Peer::Unix(cred) => CallerKey::Uid(cred.uid()),
            Peer::Tcp(addr) => CallerKey::Ip(addr.ip()),
        }
    }
}

/// A connection's identity and activity, in every request's extensions (tonic puts it there).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The connection of a request, on either listener, TLS or not.
    pub fn of(extensions: &http::Extensions) -> Option<&ConnInfo> {
        extensions.get::<ConnInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
    }
}

#[derive(Debug)]
struct Activity {
    accepted: Instant,
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    requests: u64,
    last_change: Instant,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            accepted: now,
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                last_change: now,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection is to be closed if nothing happens; None while a request runs.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let state = self.state();
        match (state.in_flight, state.requests) {
            (0, 0) => Some((self.accepted + limits.header_timeout, "header timeout")),
            (0, _) => Some((state.last_change + limits.idle_timeout, "idle timeout")),
            _ => None,
        }
    }
}

/// A request in flight on a connection: the connection is not idle until it is dropped.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        let mut state = activity.state();
        state.in_flight += 1;
        state.requests += 1;
        state.last_change = Instant::now();
        drop(state);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_change = Instant::now();
    }
}

/// Marks each request's connection busy while the request runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = TrackActivity<S>;
    fn layer(&self, inner: S) -> TrackActivity<S> {
        TrackActivity(inner)
    }
}

#[derive(Debug, Clone)]
pub struct TrackActivity<S>(S);

impl<S, B> tower::Service<http::Request<B>> for TrackActivity<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = ConnInfo::of(request.extensions()).map(|info| InFlight::start(&info.activity));
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(guard);
            response
        })
    }
}

/// A warning that repeats is logged once per [`WARN_EVERY`], with the count since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// The number of occurrences to report now, or None to stay quiet.
    fn due(&mut self) -> Option<u64> {
        self.suppressed += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One listener's open connections, in all and per caller.
struct Slots {
    listener: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
    counts: Mutex<(usize, HashMap<CallerKey, usize>)>,
    refusals: Mutex<Throttle>,
}

/// A connection's place in its listener's counts, given back when the connection ends.
struct Permit {
    slots: Arc<Slots>,
    key: CallerKey,
}

impl Slots {
    fn admit(self: &Arc<Self>, peer: &Peer) -> Option<Permit> {
        let key = peer.key();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_caller) = &mut *counts;
        let mine = per_caller.get(&key).copied().unwrap_or(0);
        let refused = if *total >= self.limits.max_connections {
            Some(("listener", self.limits.max_connections))
        } else if mine >= self.limits.max_connections_per_caller {
            Some(("caller", self.limits.max_connections_per_caller))
        } else {
            None
        };
        if let Some((which, limit)) = refused {
            drop(counts);
            self.refused(peer, which, limit);
            return None;
        }
        *total += 1;
        per_caller.insert(key.clone(), mine + 1);
        self.metrics.connection(self.listener, true);
        Some(Permit {
            slots: Arc::clone(self),
            key,
        })
    }

    fn refused(&self, peer: &Peer, which: &'static str, limit: usize) {
        self.metrics.refused(self.listener, which);
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due();
        if let Some(count) = due {
            tracing::warn!(listener = self.listener, peer = ?peer, limit_reached = which, limit,
                refused = count, "connection refused: connection limit reached");
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        super::memory::connection_closed();
        self.slots.metrics.connection(self.slots.listener, false);
        let mut counts = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_caller) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = per_caller.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // An entry per caller ever seen would be memory that never comes back.
                per_caller.remove(&self.key);
            }
        }
    }
}

/// An accepted connection: counted, timed, and carrying who is at the other end.
pub struct Connection<S> {
    io: S,
    info: ConnInfo,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    expired: bool,
    _permit: Permit,
}

impl<S> Connection<S> {
    fn new(io: S, peer: Peer, permit: Permit) -> Self {
        let limits = permit.slots.limits.clone();
        let info = ConnInfo {
            peer,
            activity: Arc::new(Activity::new()),
        };
        Connection {
            timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
            io,
            info,
            limits,
            expired: false,
            _permit: permit,
        }
    }

    /// Whether the connection's time is up; arms the timer for the next check otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while !self.expired && self.timer.as_mut().poll(cx).is_ready() {
            match self.info.activity.deadline(&self.limits) {
                Some((at, why)) if at <= Instant::now() => {
                    tracing::debug!(peer = ?self.info.peer, reason = why, "closing connection");
                    self.expired = true;
                }
                Some((at, _)) => self.timer.as_mut().reset(at),
                None => {
                    let next = Instant::now() + self.limits.idle_timeout;
                    self.timer.as_mut().reset(next)
                }
            }
        }
        self.expired
    }
}

impl<S> Connected for Connection<S> {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_expired(cx) {
            // End of stream: hyper (or the TLS handshake) ends the connection and drops it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

write_through!(Connection, io);

/// A listening socket the accept loop takes connections from.
pub trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next_connection(&self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;
}

impl Acceptor for UnixListener {
    type Io = AnyAuthority<UnixStream>;
    async fn next_connection(&self) -> io::Result<(Self::Io, Peer)> {
        let (stream, _) = self.accept().await?;
        let cred = stream.peer_cred()?;
        Ok((AnyAuthority::new(stream), Peer::Unix(cred)))
    }
}

impl Acceptor for TcpListener {
    type Io = TcpStream;
    async fn next_connection(&self) -> io::Result<(TcpStream, Peer)> {
        let (stream, addr) = self.accept().await?;
        // gRPC's small frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(addr)))
    }
}

/// The connections `listener` accepts within `limits`, for tonic's `serve_with_incoming`.
/// The accept loop ends when the stream is dropped.
pub fn incoming<A: Acceptor>(
    listener: A,
    name: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<Connection<A::Io>>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Slots {
        listener: name,
        limits,
        metrics,
        counts: Mutex::new((0, HashMap::new())),
        refusals: Mutex::new(Throttle::default()),
    });
    tokio::spawn(accept_loop(listener, slots, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop<A: Acceptor>(
    listener: A,
    slots: Arc<Slots>,
    tx: mpsc::Sender<io::Result<Connection<A::Io>>>,
) {
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.next_connection() => accepted,
            () = tx.closed() => return,
        };
        match accepted {
            Ok((io, peer)) => {
                backoff.reset();
                // A refused connection is dropped here: closed at once, its descriptor freed.
                let Some(permit) = slots.admit(&peer) else {
                    continue;
                };
                if tx
                    .send(Ok(Connection::new(io, peer, permit)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                slots.metrics.accept_failed(slots.listener);
                let pause = backoff.failed(&e, slots.listener);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Pauses after failed accepts: none for a connection that died in the backlog, growing ones
/// while the daemon is out of descriptors or memory (retrying at once cannot succeed).
#[derive(Default)]
struct Backoff {
    pause: Duration,
    warnings: Throttle,
}

impl Backoff {
    fn reset(&mut self) {
        self.pause = Duration::ZERO;
    }

    fn failed(&mut self, error: &io::Error, listener: &'static str) -> Duration {
        let per_connection = matches!(
            error.raw_os_error(),
            Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO | libc::EPERM)
        );
        if per_connection {
            return Duration::ZERO;
        }
        self.pause = (self.pause * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        if let Some(count) = self.warnings.due() {
            tracing::warn!(listener, error = %error, failures = count,
                pause_ms = self.pause.as_millis() as u64,
                "cannot accept connections (at the open-files limit?); backing off");
        }
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_ignores_per_connection_errors() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..10).map(|_| backoff.failed(&emfile, "t")).collect();
        assert_eq!(pauses[0], BACKOFF_MIN);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pauses[9], BACKOFF_MAX);
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(backoff.failed(&aborted, "t"), Duration::ZERO);
        backoff.reset();
        assert_eq!(backoff.failed(&emfile, "t"), BACKOFF_MIN);
    }

    #[test]
    fn permits_count_per_caller_and_forget_callers_that_left() {
        let slots = Arc::new(Slots {
            listener: "t",
            limits: Limits {
                max_connections: 3,
                max_connections_per_caller: 2,
                max_concurrent_streams: 1,
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            },
            metrics: Arc::default(),
            counts: Mutex::new((0, HashMap::new())),
            refusals: Mutex::new(Throttle::default()),
        });
        let a = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        let b = Peer::Tcp("127.0.0.2:1".parse().unwrap());
        let a1 = slots.admit(&a).unwrap();
        let _a2 = slots.admit(&a).unwrap();
        assert!(
            slots.admit(&a).is_none(),
            "a third connection of one caller"
        );
        let _b1 = slots.admit(&b).unwrap();
        assert!(slots.admit(&b).is_none(), "over the listener's limit");
        drop(a1);
        assert!(slots.admit(&b).is_some());
        drop(_a2);
        assert!(
            !slots
                .counts
                .lock()
                .unwrap()
                .1
                .contains_key(&CallerKey::Ip(a.key_ip()))
        );
    }

    impl Peer {
        fn key_ip(&self) -> IpAddr {
            match self {
                Peer::Tcp(addr) => addr.ip(),
                Peer::Unix(_) => unreachable!(),
            }
        }
    }
}
