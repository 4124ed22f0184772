//! Signing material over real gRPC: HMAC secrets encrypted at rest, Ed25519 public keys,
//! the data-plane GetSigningKey RPC, and master-key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, TestServer};
use tollgate_keyd::SqliteStore;
use tollgate_keyd::Store as _;
use tollgate_keyd::master::{MasterKeys, reseal_all};
use tollgate_proto::v1 as pb;
use tonic::Code;

/// The public key of RFC 9421's test-key-ed25519.
const ED25519_PUBLIC: [u8; 32] = [
    0x26, 0xb4, 0x0b, 0x8f, 0x93, 0xff, 0xf3, 0xd8, 0x97, 0x11, 0x2f, 0x7e, 0xbc, 0x58, 0x2b, 0x23, 0x2d,
    0xbd, 0x72, 0x51, 0x7d, 0x08, 0x2f, 0xe8, 0x3c, 0xfb, 0x30, 0xdd, 0xce, 0x43, 0xd1, 0xbb,
];

fn create(alg: pb::SigningAlgorithm, public_key: &[u8]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        consumer: "alice".into(),
        create_consumer: true,
        signing_algorithm: alg as i32,
        signing_public_key: public_key.to_vec(),
        ..Default::default()
    }
}

async fn get(h: &mut Harness, key_id: &str) -> pb::GetSigningKeyResponse {
    let request = pb::GetSigningKeyRequest { key_id: key_id.into() };
    h.client.get_signing_key(h.server.data(request)).await.unwrap().into_inner()
}

#[tokio::test]
async fn hmac_secret_is_returned_once_stored_encrypted_and_served_to_the_data_plane() {
    let mut h = Harness::new().await;
    let created =
        h.client.create_key(h.server.admin(create(pb::SigningAlgorithm::HmacSha256, &[]))).await.unwrap();
    let created = created.into_inner();
    let key = created.key.unwrap();
    assert_eq!(created.signing_secret.len(), 32);
    assert_eq!(key.signing_algorithm, pb::SigningAlgorithm::HmacSha256 as i32);

    let answer = get(&mut h, &key.id).await;
    assert_eq!(answer.result, pb::VerifyResult::Valid as i32);
    assert_eq!(answer.hmac_secret, created.signing_secret);
    assert_eq!(answer.consumer_id, key.consumer_id);
    assert!(answer.ed25519_public_key.is_empty());

    // The admin token cannot fetch secrets; the data-plane token cannot create keys.
    let request = pb::GetSigningKeyRequest { key_id: key.id.clone() };
    let err = h.client.get_signing_key(h.server.admin(request)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The database holds ciphertext only.
    let db = std::fs::read(h.dir.path().join("keys.db")).unwrap();
    let wal = std::fs::read(h.dir.path().join("keys.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(32).any(|w| w == created.signing_secret.as_slice()),
            "plaintext secret on disk"
        );
    }

    // Revoked: no material any more.
    let revoke = pb::RevokeKeyRequest { id: key.id.clone(), reason: "test".into() };
    h.client.revoke_key(h.server.admin(revoke)).await.unwrap();
    let answer = get(&mut h, &key.id).await;
    assert_eq!(answer.result, pb::VerifyResult::Revoked as i32);
    assert!(answer.hmac_secret.is_empty());
    assert_eq!(get(&mut h, "key_unknown").await.result, pb::VerifyResult::NotFound as i32);
}

#[tokio::test]
async fn ed25519_public_keys_are_checked_and_served() {
    let mut h = Harness::new().await;
    let created = h
        .client
        .create_key(h.server.admin(create(pb::SigningAlgorithm::Ed25519, &ED25519_PUBLIC)))
        .await
        .unwrap();
    let created = created.into_inner();
    assert!(created.signing_secret.is_empty());
    let answer = get(&mut h, &created.key.unwrap().id).await;
    assert_eq!(answer.ed25519_public_key, ED25519_PUBLIC.to_vec());
    assert_eq!(answer.algorithm, pb::SigningAlgorithm::Ed25519 as i32);

    for (request, field) in [
        (create(pb::SigningAlgorithm::Ed25519, &[1; 31]), "signing_public_key"),
        (create(pb::SigningAlgorithm::Ed25519, &[]), "signing_public_key"),
        (create(pb::SigningAlgorithm::HmacSha256, &ED25519_PUBLIC), "signing_public_key"),
        (create(pb::SigningAlgorithm::Unspecified, &ED25519_PUBLIC), "signing_public_key"),
    ] {
        let err = h.client.create_key(h.server.admin(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    // A plain key has no signing material.
    let plain = h.create_key("bob", &[]).await.key.unwrap();
    assert_eq!(get(&mut h, &plain.id).await.result, pb::VerifyResult::NotFound as i32);
}

#[tokio::test]
async fn master_key_rotation_re_encrypts_and_keeps_secrets_working() {
    let mut h = Harness::new().await;
    let created =
        h.client.create_key(h.server.admin(create(pb::SigningAlgorithm::HmacSha256, &[]))).await.unwrap();
    let created = created.into_inner();
    let key_id = created.key.unwrap().id;
    let dir = h.dir.path().to_owned();
    let Harness { server, dir: tmp, .. } = h;
    server.stop().await;

    let path = dir.join("master.key");
    let rotated = MasterKeys::load_or_create(&path).unwrap().with_new_version().unwrap();
    rotated.store(&path).unwrap();
    let store = SqliteStore::open(&dir.join("keys.db")).unwrap();
    assert_eq!(reseal_all(&store, &rotated).unwrap(), 1);
    assert!(store.list_sealed().unwrap().iter().all(|(_, s)| s.version == 2));
    drop(store);

    let server = TestServer::start(&dir).await;
    let mut h = Harness { client: server.client().await, server, dir: tmp };
    assert_eq!(get(&mut h, &key_id).await.hmac_secret, created.signing_secret);
}
