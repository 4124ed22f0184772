//! The delivery task: claims due outbox messages, POSTs each to its endpoint signed per the
//! Standard Webhooks specification, and records the attempt and its outcome.
//!
//! At least once: a message is marked delivered only after a 2xx. An attempt that gets no
//! answer within the timeout, a network error or any other status is retried on the
//! [`backoff`] schedule (or after `Retry-After`); 410 Gone disables the endpoint. At most
//! `concurrency` attempts run at once. A claimed message is leased for twice the attempt
//! timeout and a little more: if this process dies mid-attempt, the message is claimed again
//! (by any replica) when the lease ends, with the same `webhook-id`.
//!
//! An endpoint whose attempts have all failed for `disable_after` is disabled (see
//! [`Store::finish_webhook_attempt`]). At most once per `prune_interval` the task deletes
//! delivered and given-up messages and delivery-log rows older than `retention`, in batches, and
//! drops previous secrets whose grace has ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::guard::{self, Scheme};
use super::{Attempt, Outcome, Outgoing, backoff, sign};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::master::MasterKeys;
use crate::service::blocking;
use crate::store::Store;

/// Where the system's trusted certificate authorities usually are (Debian, Ubuntu, Alpine).
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How delivery runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deliver to loopback, private, link-local and metadata addresses too.
    pub allow_private: bool,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
    /// Most attempts at once; 0: the server runs no delivery (another replica does).
    pub concurrency: usize,
    /// How often due messages are looked for.
    pub poll_interval: Duration,
    /// The PEM bundle of certificate authorities `https` endpoints are verified against.
    pub ca_file: PathBuf,
    /// An endpoint whose attempts have all failed for this long is disabled.
    pub disable_after: Duration,
    /// Delivered and given-up messages, and delivery-log rows, are kept this long.
    pub retention: Duration,
    /// How often old rows are pruned.
    pub prune_interval: Duration,
}

/// The default of `--webhooks-disable-after`: 5 days.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 86_400);

/// The default of `--webhooks-retention`: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Rows one pruning transaction deletes at most (of messages, and of attempts).
pub const PRUNE_BATCH: usize = 1_000;

/// Pruning transactions one pruning round runs at most; the rest waits for the next round.
const PRUNE_BATCHES: usize = 50;

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(10),
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            disable_after: DEFAULT_DISABLE_AFTER,
            retention: DEFAULT_RETENTION,
            prune_interval: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// How long a claimed message stays leased to the attempt.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }

    fn disable_after_secs(&self) -> i64 {
        i64::try_from(self.disable_after.as_secs()).unwrap_or(i64::MAX).max(1)
    }
}

/// What an attempt got back.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
}

/// Delivers the outbox.
pub struct Deliverer {
    store: Arc<dyn Store>,
    master: MasterKeys,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// `None` when the CA bundle could not be read: `https` attempts fail with the reason.
    tls: std::result::Result<TlsConnector, String>,
    permits: Arc<Semaphore>,
}

impl Deliverer {
    pub fn new(store: Arc<dyn Store>, master: MasterKeys, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        let tls = tls_connector(&settings.ca_file);
        if let Err(err) = &tls {
            tracing::warn!(error = %err, "webhooks: https endpoints cannot be delivered to");
        }
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self { store, master, clock, settings, tls, permits }
    }

    /// Delivers (and prunes) until `stop` turns true. `commits` (see [`crate::feed::Feed::commits`]) wakes it
    /// when this process commits a change, so that a new event's first attempt does not wait for
    /// the next poll; other replicas' events are found by the poll.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, mut commits: watch::Receiver<()>) {
        let lease = i64::try_from(self.settings.lease().as_secs()).unwrap_or(60);
        let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
        let mut pruned_at: Option<Instant> = None;
        // The last claim took as many messages as there were free slots: more may be due.
        let mut more_due = false;
        loop {
            if !more_due {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    // A sender gone (the feed stopped) leaves the poll.
                    Ok(()) = commits.changed() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            } else if *stop.borrow() {
                break;
            }
            // Beside delivery, so that a long prune never delays an attempt; one at a time.
            let due = pruned_at.is_none_or(|at| at.elapsed() >= self.settings.prune_interval);
            if due && pruning.as_ref().is_none_or(|p| p.is_finished()) {
                pruned_at = Some(Instant::now());
                pruning = Some(tokio::spawn(Arc::clone(&self).prune()));
            }
            // A free slot first: at capacity, the next claim waits for an attempt to end (a
            // backlog is then sent as fast as attempts end, not a batch per poll).
            let first = tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let free = self.permits.available_permits() + 1;
            let now = self.clock.now();
            let claimed = match blocking(&self.store, move |s| {
                s.claim_webhook_messages(now, now + lease, free)
            })
            .await
            {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(error = %err, "webhooks: could not claim messages");
                    more_due = false;
                    continue;
                }
            };
            more_due = claimed.len() == free;
            let mut first = Some(first);
            for message in claimed {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match Arc::clone(&self.permits).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    me.attempt(message).await;
                    drop(permit);
                });
            }
        }
        if let Some(pruning) = pruning {
            pruning.abort();
        }
    }

    /// Deletes what is older than the retention, a batch per transaction, and previous secrets
    /// whose grace has ended.
    async fn prune(self: Arc<Self>) {
        let retention = i64::try_from(self.settings.retention.as_secs()).unwrap_or(i64::MAX);
        let mut total = super::Pruned::default();
        for _ in 0..PRUNE_BATCHES {
            let now = self.clock.now();
            let before = now.saturating_sub(retention);
            let pruned =
                match blocking(&self.store, move |s| s.prune_webhooks(before, now, PRUNE_BATCH)).await {
                    Ok(pruned) => pruned,
                    Err(err) => {
                        tracing::warn!(error = %err, "webhooks: could not prune old messages");
                        break;
                    }
                };
            total.messages += pruned.messages;
            total.attempts += pruned.attempts;
            total.secrets += pruned.secrets;
            let full = u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX);
            if pruned.messages < full && pruned.attempts < full {
                break;
            }
        }
        if total != super::Pruned::default() {
            tracing::info!(
                messages = total.messages,
                attempts = total.attempts,
                previous_secrets = total.secrets,
                "webhooks: pruned"
            );
        }
    }

    /// One attempt of one message, recorded with its outcome.
    pub async fn attempt(&self, message: Outgoing) {
        let at = self.clock.now();
        let started = Instant::now();
        // The signature's timestamp is the wall clock's, whatever clock schedules the outbox:
        // receivers compare it with theirs to refuse replays.
        let stamped = crate::clock::SystemClock.now();
        let answer = tokio::time::timeout(self.settings.timeout, self.send(&message, stamped)).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let number = message.attempts.saturating_add(1);
        let (status, error, retry_after) = match answer {
            Ok(Ok(answer)) => (answer.status, String::new(), answer.retry_after),
            Ok(Err(err)) => (0, err.to_string(), None),
            Err(_) => (0, format!("no answer within {:?}", self.settings.timeout), None),
        };
        let outcome = match status {
            200..=299 => Outcome::Delivered,
            410 => Outcome::Disable,
            _ => match backoff::delay(number, jitter(), retry_after) {
                Some(delay) => {
                    Outcome::RetryAt(at + i64::try_from(delay.as_secs()).unwrap_or(i64::MAX / 2).max(1))
                }
                None => Outcome::GaveUp,
            },
        };
        let error = if error.is_empty() && !matches!(outcome, Outcome::Delivered) {
            format!("HTTP {status}")
        } else {
            error
        };
        let record = Attempt {
            message_id: message.message_id.clone(),
            webhook_id: message.webhook_id.clone(),
            event_type: message.event_type.clone(),
            attempt: number,
            at,
            status,
            latency_ms,
            error,
            outcome: outcome.as_str().to_owned(),
            next_attempt_at: match outcome {
                Outcome::RetryAt(next) => next,
                _ => 0,
            },
        };
        tracing::info!(
            webhook_id = %record.webhook_id,
            message_id = %record.message_id,
            event = %record.event_type,
            attempt = number,
            status,
            latency_ms,
            outcome = %record.outcome,
            error = %record.error,
            "webhook attempt"
        );
        let disable_after = self.settings.disable_after_secs();
        if let Err(err) =
            blocking(&self.store, move |s| s.finish_webhook_attempt(&record, outcome, disable_after)).await
        {
            // The lease runs out and the message is sent again: at least once.
            tracing::warn!(error = %err, "webhooks: could not record an attempt");
        }
    }

    async fn send(&self, message: &Outgoing, at: i64) -> Result<Answer> {
        let target = guard::parse(&message.url)?;
        let addrs = guard::resolve(&target, self.settings.allow_private).await?;
        let secret = self.master.open(&message.webhook_id, &message.sealed)?;
        // During a secret rotation's grace, signed with the previous secret too.
        let previous =
            message.previous.as_ref().map(|p| self.master.open(&message.webhook_id, p)).transpose()?;
        let secrets: Vec<&[u8]> = std::iter::once(secret.as_slice()).chain(previous.as_deref()).collect();
        let body = Bytes::from(message.payload.clone());
        let signature = sign::signatures(&secrets, &message.message_id, at, &body)?;
        let request = Request::post(target.path_and_query.as_str())
            .header("host", target.authority.as_str())
            .header("content-type", "application/json")
            .header("user-agent", concat!("tollgate-keyd/", env!("CARGO_PKG_VERSION")))
            .header("connection", "close")
            .header("webhook-id", message.message_id.as_str())
            .header("webhook-timestamp", at.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| Error::internal("webhook request", e))?;
        // Connects to the addresses the guard checked, never to a fresh lookup's.
        let tcp =
            TcpStream::connect(&addrs[..]).await.map_err(|e| Error::Unavailable(format!("connect: {e}")))?;
        match target.scheme {
            Scheme::Http => exchange(tcp, request).await,
            Scheme::Https => {
                let connector = self.tls.as_ref().map_err(|e| Error::Unavailable(e.clone()))?;
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| Error::invalid("url", format!("not a TLS server name: {e}")))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::Unavailable(format!("TLS: {e}")))?;
                exchange(tls, request).await
            }
        }
    }
}

async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<Answer>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Error::Unavailable(format!("HTTP: {e}")))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| Error::Unavailable(format!("HTTP: {e}")));
    // The body is not read: only the status counts. The connection closes with the sender.
    drop(sender);
    driver.abort();
    let response = response?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| backoff::parse_retry_after(v, std::time::SystemTime::now()));
    Ok(Answer { status: response.status().as_u16(), retry_after })
}

/// A uniform sample in `[0, 1)`.
fn jitter() -> f64 {
    match crate::secrets::random_bytes::<8>() {
        Ok(bytes) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// A TLS client trusting the certificate authorities of a PEM bundle.
fn tls_connector(ca_file: &std::path::Path) -> std::result::Result<TlsConnector, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(ca_file).map_err(|e| format!("reading {}: {e}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    let mut in_cert = false;
    let mut encoded = String::new();
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            in_cert = true;
            encoded.clear();
        } else if line == "-----END CERTIFICATE-----" {
            in_cert = false;
            if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&encoded) {
                // A certificate the verifier cannot use is skipped, like every TLS client does.
                let _ = roots.add(CertificateDer::from(der));
            }
        } else if in_cert {
            encoded.push_str(line);
        }
    }
    if roots.is_empty() {
        return Err(format!("{} holds no usable certificate", ca_file.display()));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::Ctx;
    use crate::store::SqliteStore;
    use crate::webhooks::{EventType, NewWebhook};

    /// A key.created written at `created` and delivered at `at`: one message and one
    /// delivery-log row.
    fn delivered_event(store: &dyn Store, n: u8, created: i64, at: i64) {
        let ctx = Ctx { actor: "test".into(), now: created };
        store.create_key(&ctx, crate::store::suite::new_key(&format!("key_{n}"), "alice", n)).unwrap();
        for message in store.claim_webhook_messages(created, created + 1, 10).unwrap() {
            let attempt = Attempt {
                message_id: message.message_id,
                webhook_id: message.webhook_id,
                event_type: message.event_type,
                attempt: 1,
                at,
                status: 200,
                latency_ms: 1,
                error: String::new(),
                outcome: "delivered".into(),
                next_attempt_at: 0,
            };
            store.finish_webhook_attempt(&attempt, Outcome::Delivered, 60).unwrap();
        }
    }

    /// The delivery task prunes what is older than the retention when it starts, then waits a
    /// prune interval before it prunes again.
    #[tokio::test]
    async fn the_delivery_task_prunes_old_rows_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap());
        let master = MasterKeys::parse(&format!("1:{}", "22".repeat(32))).unwrap();
        let hook = NewWebhook {
            id: "wh_a".into(),
            url: "https://hooks.example.com/".into(),
            events: vec![EventType::KeyCreated],
            sealed: master.seal("wh_a", &[7; 32]).unwrap(),
        };
        store.create_webhook(&Ctx { actor: "test".into(), now: 1_000 }, hook).unwrap();
        delivered_event(store.as_ref(), 1, 1_000, 1_000);
        let settings = Settings {
            poll_interval: Duration::from_millis(10),
            retention: Duration::from_secs(100),
            prune_interval: Duration::from_secs(3_600),
            ..Settings::default()
        };
        let clock = Arc::new(ManualClock::new(1_101));
        let deliverer = Arc::new(Deliverer::new(Arc::clone(&store), master, clock, settings));
        let (stop, stopped) = watch::channel(false);
        let (_commit, commits) = watch::channel(());
        let task = tokio::spawn(Arc::clone(&deliverer).run(stopped, commits));

        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.list_webhook_attempts(None, 10).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the first round did not prune");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ctx = Ctx { actor: "test".into(), now: 1_101 };
        assert_eq!(store.replay_webhook_messages(&ctx, 1, None).unwrap(), 0, "the message is gone too");

        // An attempt as old (of a message the task cannot claim first: due later by its clock),
        // but the next round is an hour away: kept meanwhile.
        delivered_event(store.as_ref(), 2, 5_000, 1_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.list_webhook_attempts(None, 10).unwrap().len(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
