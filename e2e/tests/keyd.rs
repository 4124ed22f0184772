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
