//! The key service binary as the gateway and the CLI see it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_e2e::Keyd;
use tollgate_proto::v1::{CreateKeyRequest, GetKeyRequest, KeyStatus};

#[tokio::test]
async fn keyd_creates_a_key_through_the_admin_client() {
    let keyd = Keyd::start_temp().await;
    let mut admin = keyd.admin_client().await;
    let created = admin
        .create_key(CreateKeyRequest {
            consumer: "alice".into(),
            create_consumer: true,
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert!(!created.secret.is_empty());
    assert!(!key.id.is_empty());
    assert_eq!(key.scopes, vec!["read".to_owned()]);
    assert_eq!(key.status, KeyStatus::Active as i32);
    // The secret is shown once and never stored whole.
    assert!(created.secret.starts_with(&key.display_prefix), "{} / {}", created.secret, key.display_prefix);

    let fetched = admin.get_key(GetKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched.id, key.id);
}

#[tokio::test]
async fn keyd_refuses_admin_calls_with_the_dataplane_token() {
    let keyd = Keyd::start_temp().await;
    let mut dataplane = keyd.dataplane_client().await;
    let status = dataplane
        .create_key(CreateKeyRequest {
            consumer: "mallory".into(),
            create_consumer: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied),
        "{status:?}"
    );
}

#[tokio::test]
async fn keyd_restart_on_the_same_port_keeps_keys() {
    let mut keyd = Keyd::start_temp().await;
    let addr = keyd.addr();
    let (id, _secret) = keyd.create_key("alice", &[]).await;

    keyd.restart().await;
    assert_eq!(keyd.addr(), addr);
    let fetched =
        keyd.admin_client().await.get_key(GetKeyRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched.id, id);

    // A crash loses nothing either.
    keyd.kill();
    assert!(!keyd.is_running());
    keyd.restart().await;
    let fetched =
        keyd.admin_client().await.get_key(GetKeyRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(fetched.id, id);
}

#[tokio::test]
async fn the_cli_shows_usage_per_key_and_the_gateways_that_report() {
    use tollgate_proto::v1::{ReportUsageRequest, UsageCount};

    let keyd = Keyd::start_temp().await;
    let (alice, _) = keyd.create_key("alice", &[]).await;
    let (bob, _) = keyd.create_key("bob", &[]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let minute = now - now.rem_euclid(60);
    let count = |key_id: &str, outcome: &str, count: u64| UsageCount {
        key_id: key_id.to_owned(),
        minute,
        outcome: outcome.to_owned(),
        count,
        ..Default::default()
    };
    let mut data = keyd.dataplane_client().await;
    data.report_usage(ReportUsageRequest {
        gateway: "envoy-a".into(),
        batch: 1,
        feed_seq: 1,
        counts: vec![
            count(&alice, "allowed", 50),
            count(&alice, "revoked_key", 2),
            count(&bob, "allowed", 4),
        ],
    })
    .await
    .unwrap();

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(tollgate_e2e::binary("tollgate"))
            .args(["--server", &format!("http://{}", keyd.addr()), "--token", tollgate_e2e::ADMIN_TOKEN])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: tollgate_e2e::Value =
        serde_json::from_str(&cli(&["usage", "--json", "--since", "1h"])).unwrap();
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{json}");
    assert_eq!(keys[0]["key_id"], alice.as_str());
    assert_eq!((keys[0]["allowed"].as_u64(), keys[0]["denied"].as_u64()), (Some(50), Some(2)));
    assert_eq!(keys[0]["outcomes"]["revoked_key"], 2);
    assert_eq!(json["gateways"][0]["gateway"], "envoy-a");
    assert_eq!(json["gateways"][0]["behind"], 1, "the feed is at 2 (two keys created), the gateway at 1");

    // One key, as a table.
    let table = cli(&["usage", "--key", &bob]);
    let line = table.lines().find(|l| l.contains(&bob)).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("bob") && line.split_whitespace().any(|w| w == "4"), "{table}");
    assert!(!table.contains(&alice), "only the key asked for: {table}");
    assert!(table.contains("envoy-a"), "{table}");
    // By consumer.
    let json: tollgate_e2e::Value =
        serde_json::from_str(&cli(&["usage", "--json", "--consumer", "alice"])).unwrap();
    assert_eq!(json["keys"].as_array().map(Vec::len), Some(1));
}
