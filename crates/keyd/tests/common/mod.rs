//! An in-process key service on a loopback port with a real SQLite file, and a real client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_keyd::{Clock, Config, Options, SystemClock};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::key_service_client::KeyServiceClient;
use tonic::Request;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub dataplane_token: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<tollgate_keyd::Result<()>>>,
}

impl TestServer {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with_clock(dir, Arc::new(SystemClock)).await
    }

    /// A server reading the time from `clock`.
    pub async fn start_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Self {
        let mut config = Config::prepare(&Options::in_dir(dir)).unwrap();
        config.clock = clock;
        config.usage_flush_interval = Duration::from_millis(100);
        config.feed_poll_interval = Duration::from_millis(500);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let admin_token = config.admin_token.expose().to_owned();
        let dataplane_token = config.dataplane_token.expose().to_owned();
        let handle = tokio::spawn(tollgate_keyd::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self { addr, admin_token, dataplane_token, stop: Some(stop), handle: Some(handle) }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    pub async fn client(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel().await)
    }

    pub fn admin<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.admin_token)
    }

    pub fn data<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.dataplane_token)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap().unwrap();
        }
    }
}

pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A running server with a connected client.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: TestServer,
    pub client: KeyServiceClient<Channel>,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock)).await
    }

    /// A harness whose server reads the time from `clock`.
    pub async fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_with_clock(dir.path(), clock).await;
        let client = server.client().await;
        Self { dir, server, client }
    }

    pub async fn create_key(&mut self, consumer: &str, scopes: &[&str]) -> pb::CreateKeyResponse {
        let request = pb::CreateKeyRequest {
            consumer: consumer.into(),
            create_consumer: true,
            name: "test key".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.client.create_key(self.server.admin(request)).await.unwrap().into_inner()
    }

    pub async fn verify(&mut self, secret: &str) -> pb::VerifyKeyResponse {
        let request = pb::VerifyKeyRequest { key_hash: tollgate_core::key::key_hash(secret).to_vec() };
        self.client.verify_key(self.server.data(request)).await.unwrap().into_inner()
    }

    pub async fn changes(&mut self, after_seq: u64, limit: u32) -> pb::ListChangesResponse {
        let request = pb::ListChangesRequest { after_seq, limit };
        self.client.list_changes(self.server.data(request)).await.unwrap().into_inner()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn result(response: &pb::VerifyKeyResponse) -> pb::VerifyResult {
    pb::VerifyResult::try_from(response.result).unwrap()
}

pub fn kind(change: &pb::Change) -> pb::ChangeKind {
    pb::ChangeKind::try_from(change.kind).unwrap()
}
