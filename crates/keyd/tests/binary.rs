//! The `tollgate-keyd` binary: flags, the address file, signals and durability across `kill -9`.

// Helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_proto::v1 as pb;
use tollgate_proto::v1::key_service_client::KeyServiceClient;
use tonic::Request;
use tonic::transport::Channel;

fn spawn(dir: &Path, extra: &[&str]) -> (Child, String) {
    spawn_with(dir, &dir.join("addr"), extra, Stdio::null())
}

// The caller owns the child and waits for it.
#[allow(clippy::zombie_processes)]
fn spawn_with(dir: &Path, addr_file: &Path, extra: &[&str], stderr: Stdio) -> (Child, String) {
    let _ = std::fs::remove_file(addr_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-keyd"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--addr-file")
        .arg(addr_file)
        // Not the default port: these tests run side by side.
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .arg("--http-listen")
        .arg("127.0.0.1:0")
        .args(extra)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_DATAPLANE_TOKEN")
        .env_remove("TOLLGATE_MASTER_KEYS")
        .env_remove("TOLLGATE_MASTER_KEY_FILE")
        .env_remove("TOLLGATE_KEYD_LISTEN")
        .env_remove("TOLLGATE_KEYD_METRICS_LISTEN")
        .env_remove("TOLLGATE_KEYD_HTTP_LISTEN")
        .env_remove("TOLLGATE_VIEWER_TOKEN")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("RUST_LOG")
        .env_remove("TOKIO_WORKER_THREADS")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(addr) = std::fs::read_to_string(addr_file)
            && addr.ends_with('\n')
        {
            return (child, addr.trim().to_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service did not write its address");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn connect(addr: &str) -> KeyServiceClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match KeyServiceClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(err) => {
                assert!(Instant::now() < deadline, "cannot connect: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the service did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path(), &["--log-format", "text"]);
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap().trim().to_owned();
    let data = std::fs::read_to_string(dir.path().join("data/dataplane.token")).unwrap().trim().to_owned();
    let mut client = connect(&addr).await;
    let created = client
        .create_key(bearer(
            pb::CreateKeyRequest { consumer: "olga".into(), create_consumer: true, ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    child.kill().unwrap();
    wait_exit(&mut child).await;

    let (mut child, addr) = spawn(dir.path(), &[]);
    let mut client = connect(&addr).await;
    let verified = client
        .verify_key(bearer(
            pb::VerifyKeyRequest { key_hash: tollgate_core::key::key_hash(&created.secret).to_vec() },
            &data,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.result, pb::VerifyResult::Valid as i32);
    assert_eq!(verified.consumer_id, "olga");

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).await.success());

    // The audit log can be read offline.
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate-keyd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("audit")
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = lines.iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["consumer.create", "key.create"]);
    assert_eq!(lines[1]["consumer_id"], "olga");
}

#[tokio::test]
async fn tokens_given_on_the_command_line_replace_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) =
        spawn(dir.path(), &["--admin-token", "admin-secret", "--dataplane-token", "data-secret"]);
    let mut client = connect(&addr).await;
    client.list_consumers(bearer(pb::ListConsumersRequest::default(), "admin-secret")).await.unwrap();
    let err =
        client.list_consumers(bearer(pb::ListConsumersRequest::default(), "data-secret")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    client.list_changes(bearer(pb::ListChangesRequest::default(), "data-secret")).await.unwrap();
    assert!(!dir.path().join("data/admin.token").exists());
    child.kill().unwrap();
    wait_exit(&mut child).await;
}

/// The permission bits of every entry in `dir`, by name.
fn modes(dir: &Path) -> BTreeMap<String, u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            (entry.file_name().into_string().unwrap(), mode)
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("data").join(name)).unwrap().trim().to_owned()
}

#[tokio::test]
async fn every_file_in_an_existing_open_data_directory_is_created_and_kept_0600() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, Permissions::from_mode(0o755)).unwrap();
    let addr_file = data.join("addr");
    let first_log = dir.path().join("first.log");
    let (mut child, addr) = spawn_with(
        dir.path(),
        &addr_file,
        &["--log-format", "text"],
        Stdio::from(File::create(&first_log).unwrap()),
    );
    // A committed write, so the write-ahead log and the shared-memory index hold data.
    let mut client = connect(&addr).await;
    let created = client
        .create_key(bearer(
            pb::CreateKeyRequest { consumer: "petra".into(), create_consumer: true, ..Default::default() },
            &token(dir.path(), "admin.token"),
        ))
        .await
        .unwrap()
        .into_inner();

    let files = modes(&data);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "addr",
            "admin.token",
            "dataplane.token",
            "keys.db",
            "keys.db-shm",
            "keys.db-wal",
            "master.key",
            "pepper",
            "viewer.token"
        ]
    );
    for (name, mode) in &files {
        assert_eq!(*mode, 0o600, "{name} was created with mode {mode:o}");
    }
    // The directory is the operator's: left as it is, with a warning.
    assert_eq!(mode(&data), 0o755);

    // `kill -9` leaves the WAL and shared-memory files behind. Files loosened since (by hand, or
    // created by an older version) are tightened at the next start.
    child.kill().unwrap();
    wait_exit(&mut child).await;
    for name in files.keys() {
        std::fs::set_permissions(data.join(name), Permissions::from_mode(0o644)).unwrap();
    }
    let second_log = dir.path().join("second.log");
    let (mut child, addr) = spawn_with(
        dir.path(),
        &addr_file,
        &["--log-format", "text"],
        Stdio::from(File::create(&second_log).unwrap()),
    );
    let mut client = connect(&addr).await;
    let verified = client
        .verify_key(bearer(
            pb::VerifyKeyRequest { key_hash: tollgate_core::key::key_hash(&created.secret).to_vec() },
            &token(dir.path(), "dataplane.token"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.result, pb::VerifyResult::Valid as i32);
    let files = modes(&data);
    assert!(files.contains_key("keys.db-wal") && files.contains_key("keys.db-shm"), "{files:?}");
    for (name, mode) in &files {
        assert_eq!(*mode, 0o600, "{name} was left with mode {mode:o}");
    }
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).await.success());

    let first = std::fs::read_to_string(&first_log).unwrap();
    assert!(first.contains("data directory is open to other users"), "{first}");
    let second = std::fs::read_to_string(&second_log).unwrap();
    for name in
        ["keys.db", "keys.db-wal", "keys.db-shm", "pepper", "admin.token", "dataplane.token", "master.key"]
    {
        let path = data.join(name).display().to_string();
        assert!(
            second.lines().any(|l| l.contains("tightened") && l.contains(&path)),
            "no tightening logged for {name}: {second}"
        );
    }
}

/// The number of threads of process `pid`, from `/proc/<pid>/status`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_thousand_watchers_get_every_change_from_a_bounded_number_of_threads() {
    const STREAMS: usize = 1000;
    const CONNECTIONS: usize = 4;
    // The runtime keeps one worker per CPU. Everything else (the main thread and the blocking
    // threads of the few store calls running at once: the feed reader, catch-up reads, this
    // test's own calls) fits well under 32. A thread per waking stream does not.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let bound = workers + 32;

    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path(), &[]);
    let pid = child.id();
    let admin = token(dir.path(), "admin.token");
    let data = token(dir.path(), "dataplane.token");
    let mut client = connect(&addr).await;
    let key = client
        .create_key(bearer(
            pb::CreateKeyRequest { consumer: "quinn".into(), create_consumer: true, ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let backlog: Vec<u64> = client
        .list_changes(bearer(pb::ListChangesRequest::default(), &data))
        .await
        .unwrap()
        .into_inner()
        .changes
        .iter()
        .map(|c| c.seq)
        .collect();
    assert!(!backlog.is_empty());

    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut watcher = KeyServiceClient::new(channel);
        for _ in 0..STREAMS / CONNECTIONS {
            let request = bearer(pb::WatchChangesRequest { after_seq: 0 }, &data);
            streams.push(watcher.watch_changes(request).await.unwrap().into_inner());
        }
    }
    let mut peak = threads(pid);
    let deadline = Duration::from_secs(30);
    for stream in &mut streams {
        for seq in &backlog {
            let change = tokio::time::timeout(deadline, stream.message()).await.unwrap().unwrap().unwrap();
            assert_eq!(change.seq, *seq);
        }
    }
    peak = peak.max(threads(pid));

    // One change wakes every stream at once.
    client
        .revoke_key(bearer(pb::RevokeKeyRequest { id: key.id.clone(), reason: String::new() }, &admin))
        .await
        .unwrap();
    let expected = backlog.last().unwrap() + 1;
    for stream in &mut streams {
        let change = tokio::time::timeout(deadline, stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!((change.seq, change.kind), (expected, pb::ChangeKind::KeyRevoked as i32));
        assert_eq!(change.key_id, key.id);
    }
    peak = peak.max(threads(pid));
    eprintln!("{STREAMS} watching streams: at most {peak} threads (bound {bound})");
    assert!(peak <= bound, "{peak} threads for {STREAMS} watching streams (bound {bound})");

    drop(streams);
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).await.success());
}
