//! The key service over real gRPC, with a real SQLite file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, TestServer, kind, now, result, with_token};
use tokio_stream::StreamExt;
use tollgate_keyd::{Clock, ManualClock};
use tollgate_proto::v1 as pb;
use tonic::{Code, Request};

#[tokio::test]
async fn requests_without_the_right_token_are_unauthenticated() {
    let mut h = Harness::new().await;
    let admin = h.server.admin_token.clone();
    let data = h.server.dataplane_token.clone();
    let list = || pb::ListKeysRequest::default();

    // No token, wrong token, the data-plane token on an admin RPC.
    let err = h.client.list_keys(Request::new(list())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h.client.list_keys(with_token(list(), "tga_wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h.client.list_keys(with_token(list(), &data)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let create =
        pb::CreateKeyRequest { consumer: "alice".into(), create_consumer: true, ..Default::default() };
    let err = h.client.create_key(with_token(create, &data)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The admin token on data-plane RPCs.
    let verify = pb::VerifyKeyRequest { key_hash: vec![0; 32] };
    let err = h.client.verify_key(with_token(verify.clone(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h.client.verify_key(Request::new(verify)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h.client.list_changes(with_token(pb::ListChangesRequest::default(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err =
        h.client.watch_changes(with_token(pb::WatchChangesRequest::default(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // And the right tokens work.
    h.client.list_keys(with_token(list(), &admin)).await.unwrap();
    h.client.list_changes(with_token(pb::ListChangesRequest::default(), &data)).await.unwrap();
    h.server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let h = Harness::new().await;
    let channel = h.server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: tollgate_proto::KEY_SERVICE.into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    assert!(list.service.iter().any(|s| s.name == tollgate_proto::KEY_SERVICE), "{list:?}");
    h.server.stop().await;
}

#[tokio::test]
async fn created_key_verifies_with_its_identity_and_is_stored_only_as_a_keyed_hash() {
    let mut h = Harness::new().await;
    let request = pb::CreateKeyRequest {
        consumer: "alice".into(),
        create_consumer: true,
        name: "ci".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        metadata: [("team".to_string(), "payments".to_string())].into(),
        rate_limit: Some(pb::RateLimitPolicy {
            tier: "gold".into(),
            limits: vec![pb::RateLimit { rate: 100, period: pb::Period::Minute as i32, burst: 0 }],
        }),
        ttl_seconds: 3600,
        ..Default::default()
    };
    let created = h.client.create_key(h.server.admin(request)).await.unwrap().into_inner();
    let secret = created.secret.clone();
    assert_eq!(tollgate_core::key::check_format(&secret), Ok(()));
    let key = created.key.unwrap();
    assert!(key.id.starts_with("key_") && key.id.len() == 20, "{}", key.id);
    assert_eq!(key.consumer_id, "alice");
    assert_eq!(key.display_prefix, tollgate_core::key::display_prefix(&secret));
    assert_eq!(key.status, pb::KeyStatus::Active as i32);
    let expected_expiry = now() + 3600;
    assert!((key.expires_at - expected_expiry).abs() <= 2);

    let verified = h.verify(&secret).await;
    assert_eq!(result(&verified), pb::VerifyResult::Valid);
    assert_eq!(verified.key_id, key.id);
    assert_eq!(verified.consumer_id, "alice");
    assert_eq!(verified.scopes, vec!["orders:read", "orders:write"]);
    assert_eq!(verified.rate_limit.unwrap().tier, "gold");
    assert_eq!(verified.expires_at, key.expires_at);
    assert_eq!(verified.display_prefix, key.display_prefix);
    assert_eq!(verified.feed_seq, h.changes(0, 0).await.head_seq);
    assert!(verified.feed_seq >= 1);

    // A well-formed key that was never issued.
    let other = tollgate_core::key::key_from_entropy(&[7u8; 64]).unwrap();
    assert_eq!(result(&h.verify(&other).await), pb::VerifyResult::NotFound);
    let err = h
        .client
        .verify_key(h.server.data(pb::VerifyKeyRequest { key_hash: vec![1, 2, 3] }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("key_hash"), "{}", err.message());

    // Neither the secret nor its SHA-256 is anywhere in the database files.
    let dir = h.dir.path().to_owned();
    h.server.stop().await;
    let sha = tollgate_core::key::key_hash(&secret);
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("keys.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret found in {name}");
        assert!(!bytes.windows(32).any(|w| w == sha), "key hash found in {name}");
        assert!(!bytes.windows(32).any(|w| w == &sha[..]), "key hash found in {name}");
        checked += 1;
    }
    assert!(checked >= 1);
}

#[tokio::test]
async fn revoked_key_verifies_as_revoked_and_appears_in_the_feed() {
    let mut h = Harness::new().await;
    let created = h.create_key("bob", &["read"]).await;
    let key_id = created.key.unwrap().id;
    let head = h.changes(0, 0).await.head_seq;

    let revoked = h
        .client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: key_id.clone(), reason: "leaked".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, pb::KeyStatus::Revoked as i32);
    assert!(revoked.revoked_at > 0);

    let verified = h.verify(&created.secret).await;
    assert_eq!(result(&verified), pb::VerifyResult::Revoked);
    assert_eq!(verified.key_id, key_id);

    let changes = h.changes(head, 0).await;
    assert_eq!(changes.changes.len(), 1);
    assert_eq!(kind(&changes.changes[0]), pb::ChangeKind::KeyRevoked);
    assert_eq!(changes.changes[0].key_id, key_id);
    assert_eq!(changes.changes[0].consumer_id, "bob");
    assert_eq!(verified.feed_seq, changes.head_seq);

    // Revoking again changes nothing; rotating or updating a revoked key is refused.
    h.client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: key_id.clone(), reason: String::new() }))
        .await
        .unwrap();
    assert_eq!(h.changes(0, 0).await.head_seq, changes.head_seq);
    let err = h
        .client
        .rotate_key(h.server.admin(pb::RotateKeyRequest { id: key_id.clone(), grace_period_seconds: 0 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.server.stop().await;
}

#[tokio::test]
async fn key_past_its_expiry_verifies_as_expired() {
    let clock = Arc::new(ManualClock::starting_now());
    let mut h = Harness::with_clock(clock.clone()).await;
    let request = pb::CreateKeyRequest {
        consumer: "carol".into(),
        create_consumer: true,
        ttl_seconds: 1,
        ..Default::default()
    };
    let created = h.client.create_key(h.server.admin(request)).await.unwrap().into_inner();
    let key = created.key.unwrap();
    // Valid until its expiry time, expired from then on.
    assert_eq!(key.expires_at, clock.now() + 1);
    assert_eq!(result(&h.verify(&created.secret).await), pb::VerifyResult::Valid);
    clock.set(key.expires_at);
    let verified = h.verify(&created.secret).await;
    assert_eq!(result(&verified), pb::VerifyResult::Expired);
    assert_eq!(verified.expires_at, key.expires_at);
    let fetched = h.client.get_key(h.server.admin(pb::GetKeyRequest { id: key.id.clone() })).await.unwrap();
    assert_eq!(fetched.into_inner().status, pb::KeyStatus::Expired as i32);
    let expired = h
        .client
        .list_keys(
            h.server
                .admin(pb::ListKeysRequest { status: pb::KeyStatus::Expired as i32, ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.keys.len(), 1);
    h.server.stop().await;
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let clock = Arc::new(ManualClock::starting_now());
    let mut h = Harness::with_clock(clock.clone()).await;
    let created = h.create_key("dave", &["read"]).await;
    let key = created.key.unwrap();
    let old = created.secret;

    let rotated = h
        .client
        .rotate_key(h.server.admin(pb::RotateKeyRequest { id: key.id.clone(), grace_period_seconds: 1 }))
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret;
    let rotated_key = rotated.key.unwrap();
    assert_eq!(rotated_key.id, key.id);
    assert_ne!(new, old);
    assert_eq!(tollgate_core::key::check_format(&new), Ok(()));
    assert_eq!(rotated_key.display_prefix, tollgate_core::key::display_prefix(&new));
    assert_eq!(rotated_key.previous_display_prefix, key.display_prefix);
    assert!(rotated_key.rotated_at > 0);
    let grace_end = rotated_key.previous_expires_at;
    assert_eq!(grace_end, clock.now() + 1);

    let during = h.verify(&old).await;
    assert_eq!(result(&during), pb::VerifyResult::Valid);
    assert_eq!(during.key_id, key.id);
    assert_eq!(during.expires_at, grace_end);
    assert_eq!(during.display_prefix, key.display_prefix);
    assert!(during.previous_secret, "the answer says the old secret is the previous one");
    let fresh = h.verify(&new).await;
    assert_eq!(result(&fresh), pb::VerifyResult::Valid);
    assert_eq!(fresh.expires_at, 0);
    assert!(!fresh.previous_secret);

    let changes = h.changes(0, 0).await.changes;
    assert_eq!(kind(changes.last().unwrap()), pb::ChangeKind::KeyRotated);

    clock.set(grace_end);
    assert_eq!(result(&h.verify(&old).await), pb::VerifyResult::Expired);
    assert_eq!(result(&h.verify(&new).await), pb::VerifyResult::Valid);

    // A zero grace ends the previous secret at once; only one previous secret is kept.
    let again = h
        .client
        .rotate_key(h.server.admin(pb::RotateKeyRequest { id: key.id.clone(), grace_period_seconds: 0 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result(&h.verify(&new).await), pb::VerifyResult::Expired);
    assert_eq!(result(&h.verify(&old).await), pb::VerifyResult::NotFound);
    assert_eq!(result(&h.verify(&again.secret).await), pb::VerifyResult::Valid);
    h.server.stop().await;
}

#[tokio::test]
async fn change_feed_is_ordered_and_honours_after_seq_and_limit() {
    let mut h = Harness::new().await;
    let a = h.create_key("erin", &[]).await.key.unwrap();
    let b = h.create_key("erin", &[]).await.key.unwrap();
    h.client
        .update_key(h.server.admin(pb::UpdateKeyRequest {
            id: a.id.clone(),
            scopes: Some(pb::Scopes { values: vec!["admin".into()] }),
            ..Default::default()
        }))
        .await
        .unwrap();
    h.client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: b.id.clone(), reason: String::new() }))
        .await
        .unwrap();

    let all = h.changes(0, 0).await;
    let kinds: Vec<_> = all.changes.iter().map(kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::ChangeKind::KeyCreated,
            pb::ChangeKind::KeyCreated,
            pb::ChangeKind::KeyUpdated,
            pb::ChangeKind::KeyRevoked
        ]
    );
    let seqs: Vec<u64> = all.changes.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(all.head_seq, *seqs.last().unwrap());
    assert_eq!(all.changes[2].key_id, a.id);

    let page = h.changes(seqs[0], 2).await;
    assert_eq!(page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs[1..3].to_vec());
    assert_eq!(page.head_seq, all.head_seq);
    let tail = h.changes(all.head_seq, 0).await;
    assert!(tail.changes.is_empty());
    assert_eq!(tail.head_seq, all.head_seq);

    // The update shows in VerifyKey.
    h.server.stop().await;
}

#[tokio::test]
async fn watch_changes_sends_the_backlog_then_new_changes() {
    let mut h = Harness::new().await;
    let first = h.create_key("frank", &[]).await.key.unwrap();
    let mut stream = h
        .client
        .watch_changes(h.server.data(pb::WatchChangesRequest { after_seq: 0 }))
        .await
        .unwrap()
        .into_inner();
    let backlog =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(kind(&backlog), pb::ChangeKind::KeyCreated);
    assert_eq!(backlog.key_id, first.id);

    let mut admin = h.server.client().await;
    admin
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: first.id.clone(), reason: String::new() }))
        .await
        .unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(kind(&live), pb::ChangeKind::KeyRevoked);
    assert_eq!(live.key_id, first.id);
    assert!(live.seq > backlog.seq);

    // Shutting the server down ends the stream instead of hanging.
    h.server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(end.is_none() || end.unwrap().is_err());
}

#[tokio::test]
async fn deleting_a_consumer_revokes_its_keys_and_feeds_each_revocation() {
    let mut h = Harness::new().await;
    let one = h.create_key("grace", &[]).await;
    let two = h.create_key("grace", &[]).await;
    let other = h.create_key("heidi", &[]).await;
    let head = h.changes(0, 0).await.head_seq;

    let deleted = h
        .client
        .delete_consumer(h.server.admin(pb::DeleteConsumerRequest { id: "grace".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revoked_keys, 2);

    assert_eq!(result(&h.verify(&one.secret).await), pb::VerifyResult::Revoked);
    assert_eq!(result(&h.verify(&two.secret).await), pb::VerifyResult::Revoked);
    assert_eq!(result(&h.verify(&other.secret).await), pb::VerifyResult::Valid);

    let changes = h.changes(head, 0).await.changes;
    let revoked: Vec<&str> =
        changes.iter().filter(|c| kind(c) == pb::ChangeKind::KeyRevoked).map(|c| c.key_id.as_str()).collect();
    assert_eq!(revoked, vec![one.key.unwrap().id.as_str(), two.key.unwrap().id.as_str()]);
    assert!(changes.iter().any(|c| kind(c) == pb::ChangeKind::ConsumerDeleted && c.consumer_id == "grace"));

    let err = h
        .client
        .get_consumer(h.server.admin(pb::GetConsumerRequest { id: "grace".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .client
        .delete_consumer(h.server.admin(pb::DeleteConsumerRequest { id: "grace".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    h.server.stop().await;
}

#[tokio::test]
async fn list_keys_pages_and_filters() {
    let mut h = Harness::new().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(h.create_key("ivan", &[]).await.key.unwrap().id);
    }
    let judy = h.create_key("judy", &[]).await.key.unwrap().id;
    h.client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: ids[3].clone(), reason: String::new() }))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = h
            .client
            .list_keys(h.server.admin(pb::ListKeysRequest {
                consumer: "ivan".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let all = h.client.list_keys(h.server.admin(pb::ListKeysRequest::default())).await.unwrap().into_inner();
    assert_eq!(all.keys.len(), 8);
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.keys.last().unwrap().id, judy);

    let active = h
        .client
        .list_keys(h.server.admin(pb::ListKeysRequest {
            consumer: "ivan".into(),
            status: pb::KeyStatus::Active as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.keys.len(), 6);
    let revoked = h
        .client
        .list_keys(
            h.server
                .admin(pb::ListKeysRequest { status: pb::KeyStatus::Revoked as i32, ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![ids[3].clone()]);

    let err = h
        .client
        .list_keys(
            h.server.admin(pb::ListKeysRequest { page_token: "garbage!".into(), ..Default::default() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"));
    h.server.stop().await;
}

#[tokio::test]
async fn consumers_can_be_created_read_listed_and_updated() {
    let mut h = Harness::new().await;
    let created = h
        .client
        .create_consumer(h.server.admin(pb::CreateConsumerRequest {
            id: "acme".into(),
            name: "Acme Corp".into(),
            metadata: [("plan".to_string(), "pro".to_string())].into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.id, "acme");
    assert!(created.created_at > 0);
    let generated = h
        .client
        .create_consumer(
            h.server.admin(pb::CreateConsumerRequest { name: "Globex".into(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(generated.id.starts_with("con_") && generated.id.len() == 20, "{}", generated.id);

    let err = h
        .client
        .create_consumer(
            h.server.admin(pb::CreateConsumerRequest { id: "acme".into(), ..Default::default() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let by_name = h
        .client
        .get_consumer(h.server.admin(pb::GetConsumerRequest { id: "Acme Corp".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name, created);

    let updated = h
        .client
        .update_consumer(h.server.admin(pb::UpdateConsumerRequest {
            id: "acme".into(),
            name: Some("Acme Inc".into()),
            metadata: Some(pb::Metadata { entries: [("plan".to_string(), "enterprise".to_string())].into() }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Acme Inc");
    assert_eq!(updated.metadata["plan"], "enterprise");
    let last = h.changes(0, 0).await.changes.pop().unwrap();
    assert_eq!(kind(&last), pb::ChangeKind::ConsumerUpdated);
    assert_eq!(last.consumer_id, "acme");

    for i in 0..3 {
        h.client
            .create_consumer(
                h.server.admin(pb::CreateConsumerRequest { id: format!("c{i}"), ..Default::default() }),
            )
            .await
            .unwrap();
    }
    let first = h
        .client
        .list_consumers(h.server.admin(pb::ListConsumersRequest { page_size: 3, page_token: String::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.consumers.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = h
        .client
        .list_consumers(
            h.server.admin(pb::ListConsumersRequest { page_size: 3, page_token: first.next_page_token }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.consumers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["c1", "c2"]);
    assert!(second.next_page_token.is_empty());
    h.server.stop().await;
}

#[tokio::test]
async fn create_key_for_a_missing_consumer_needs_create_consumer() {
    let mut h = Harness::new().await;
    let err = h
        .client
        .create_key(h.server.admin(pb::CreateKeyRequest { consumer: "nobody".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A name that is not a valid id gets a generated id; a later key finds it by name.
    let first = h.create_key("Team Rocket", &[]).await.key.unwrap();
    assert!(first.consumer_id.starts_with("con_"), "{}", first.consumer_id);
    let second = h.create_key("Team Rocket", &[]).await.key.unwrap();
    assert_eq!(second.consumer_id, first.consumer_id);
    let consumer = h
        .client
        .get_consumer(h.server.admin(pb::GetConsumerRequest { id: first.consumer_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consumer.name, "Team Rocket");
    h.server.stop().await;
}

#[tokio::test]
async fn get_update_and_last_use_of_a_key() {
    let mut h = Harness::new().await;
    let created = h.create_key("kim", &["read"]).await;
    let id = created.key.unwrap().id;
    let expires_at = now() + 600;
    let updated = h
        .client
        .update_key(h.server.admin(pb::UpdateKeyRequest {
            id: id.clone(),
            name: Some("renamed".into()),
            scopes: Some(pb::Scopes { values: vec!["read".into(), "write".into()] }),
            metadata: Some(pb::Metadata { entries: [("env".to_string(), "prod".to_string())].into() }),
            rate_limit: Some(pb::RateLimitPolicy {
                tier: "silver".into(),
                limits: vec![pb::RateLimit { rate: 5, period: pb::Period::Second as i32, burst: 10 }],
            }),
            expires_at: Some(expires_at),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.scopes, vec!["read", "write"]);
    assert_eq!(updated.expires_at, expires_at);

    let verified = h.verify(&created.secret).await;
    assert_eq!(verified.scopes, vec!["read", "write"]);
    assert_eq!(verified.expires_at, expires_at);
    assert_eq!(verified.rate_limit.unwrap().limits[0].burst, 10);

    // Last use is written in the background.
    let mut last_used = 0;
    for _ in 0..50 {
        let key = h
            .client
            .get_key(h.server.admin(pb::GetKeyRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        last_used = key.last_used_at;
        if last_used != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((last_used - now()).abs() <= 5, "last_used_at = {last_used}");

    // Clearing the expiry.
    let cleared = h
        .client
        .update_key(h.server.admin(pb::UpdateKeyRequest {
            id: id.clone(),
            expires_at: Some(0),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.expires_at, 0);
    assert_eq!(cleared.scopes, vec!["read", "write"]);

    for err in [
        h.client.get_key(h.server.admin(pb::GetKeyRequest { id: "key_missing".into() })).await.unwrap_err(),
        h.client
            .update_key(
                h.server.admin(pb::UpdateKeyRequest { id: "key_missing".into(), ..Default::default() }),
            )
            .await
            .unwrap_err(),
        h.client
            .revoke_key(
                h.server.admin(pb::RevokeKeyRequest { id: "key_missing".into(), reason: String::new() }),
            )
            .await
            .unwrap_err(),
        h.client
            .rotate_key(
                h.server.admin(pb::RotateKeyRequest { id: "key_missing".into(), grace_period_seconds: 0 }),
            )
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    h.server.stop().await;
}

#[tokio::test]
async fn invalid_arguments_name_the_field() {
    let mut h = Harness::new().await;
    let base =
        || pb::CreateKeyRequest { consumer: "lee".into(), create_consumer: true, ..Default::default() };
    let cases: Vec<(pb::CreateKeyRequest, &str)> = vec![
        (pb::CreateKeyRequest { consumer: String::new(), ..base() }, "consumer"),
        (pb::CreateKeyRequest { scopes: vec!["has space".into()], ..base() }, "scopes[0]"),
        (pb::CreateKeyRequest { scopes: vec!["ok".into(), String::new()], ..base() }, "scopes[1]"),
        (pb::CreateKeyRequest { expires_at: now() + 100, ttl_seconds: 10, ..base() }, "expires_at"),
        (pb::CreateKeyRequest { expires_at: now() - 10, ..base() }, "expires_at"),
        (pb::CreateKeyRequest { name: "x".repeat(129), ..base() }, "name"),
        (
            pb::CreateKeyRequest {
                metadata: (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect(),
                ..base()
            },
            "metadata",
        ),
        (
            pb::CreateKeyRequest {
                rate_limit: Some(pb::RateLimitPolicy {
                    tier: "t".into(),
                    limits: vec![pb::RateLimit { rate: 0, period: 1, burst: 0 }],
                }),
                ..base()
            },
            "rate_limit.limits[0].rate",
        ),
    ];
    for (request, field) in cases {
        let err = h.client.create_key(h.server.admin(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "expected {field:?} in {:?}", err.message());
    }

    let err = h
        .client
        .create_consumer(
            h.server.admin(pb::CreateConsumerRequest { id: "bad id".into(), ..Default::default() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("id"), "{}", err.message());

    let key = h.create_key("lee", &[]).await.key.unwrap();
    let err = h
        .client
        .rotate_key(
            h.server.admin(pb::RotateKeyRequest { id: key.id.clone(), grace_period_seconds: u64::MAX }),
        )
        .await
        .unwrap_err();
    assert!(err.message().starts_with("grace_period_seconds"), "{}", err.message());
    let err = h
        .client
        .update_key(h.server.admin(pb::UpdateKeyRequest {
            id: key.id.clone(),
            scopes: Some(pb::Scopes { values: vec!["a b".into()] }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("scopes.values[0]"), "{}", err.message());
    let err = h
        .client
        .list_keys(h.server.admin(pb::ListKeysRequest { status: 99, ..Default::default() }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("status"), "{}", err.message());

    // Nothing invalid was written.
    assert_eq!(h.changes(0, 0).await.changes.len(), 1);
    h.server.stop().await;
}

#[tokio::test]
async fn reopening_the_database_keeps_keys_consumers_and_feed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let created = client
        .create_key(server.admin(pb::CreateKeyRequest {
            consumer: "mallory".into(),
            create_consumer: true,
            scopes: vec!["read".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let head = client
        .list_changes(server.data(pb::ListChangesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .head_seq;
    let admin_token = server.admin_token.clone();
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    assert_eq!(server.admin_token, admin_token);
    let mut client = server.client().await;
    let key = client
        .get_key(server.admin(pb::GetKeyRequest { id: created.key.as_ref().unwrap().id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.consumer_id, "mallory");
    client.get_consumer(server.admin(pb::GetConsumerRequest { id: "mallory".into() })).await.unwrap();
    let verified =
        client
            .verify_key(server.data(pb::VerifyKeyRequest {
                key_hash: tollgate_core::key::key_hash(&created.secret).to_vec(),
            }))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(result(&verified), pb::VerifyResult::Valid);
    assert_eq!(verified.feed_seq, head);

    client
        .revoke_key(server.admin(pb::RevokeKeyRequest { id: key.id.clone(), reason: String::new() }))
        .await
        .unwrap();
    let changes =
        client.list_changes(server.data(pb::ListChangesRequest::default())).await.unwrap().into_inner();
    assert_eq!(changes.head_seq, head + 1);
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn generated_secret_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new().await;
    for name in ["admin.token", "dataplane.token", "pepper"] {
        let mode = std::fs::metadata(h.dir.path().join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let admin = std::fs::read_to_string(h.dir.path().join("admin.token")).unwrap();
    assert!(admin.trim().starts_with("tga_") && admin.trim().len() == 44);
    let data = std::fs::read_to_string(h.dir.path().join("dataplane.token")).unwrap();
    assert!(data.trim().starts_with("tgd_"));
    assert_eq!(std::fs::read(h.dir.path().join("pepper")).unwrap().len(), 32);
    h.server.stop().await;
}

#[tokio::test]
async fn audit_log_records_every_admin_mutation() {
    let mut h = Harness::new().await;
    let key = h.create_key("nina", &[]).await.key.unwrap();
    h.client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: key.id.clone(), reason: "test".into() }))
        .await
        .unwrap();
    let dir = h.dir.path().to_owned();
    h.server.stop().await;

    use tollgate_keyd::Store;
    let store = tollgate_keyd::SqliteStore::open(&dir.join("keys.db")).unwrap();
    let audit = store.list_audit(0, 100).unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, vec!["consumer.create", "key.create", "key.revoke"]);
    assert!(audit.iter().all(|a| a.actor == "admin-token"));
    assert_eq!(audit[2].key_id, key.id);
    assert_eq!(audit[2].detail["reason"], "test");
}

/// Every time the service records — creation, rotation and its grace end, revocation, last use,
/// the change feed and the audit log — is its clock's, not the machine's.
#[tokio::test]
async fn every_recorded_time_comes_from_the_service_clock() {
    const T0: i64 = 4_000_000_000;
    let clock = Arc::new(ManualClock::new(T0));
    let mut h = Harness::with_clock(clock.clone()).await;
    let created = h.create_key("olga", &[]).await;
    let key = created.key.unwrap();
    assert_eq!(key.created_at, T0);
    assert_eq!(result(&h.verify(&created.secret).await), pb::VerifyResult::Valid);

    clock.advance(10);
    let rotated = h
        .client
        .rotate_key(h.server.admin(pb::RotateKeyRequest { id: key.id.clone(), grace_period_seconds: 60 }))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!((rotated.rotated_at, rotated.previous_expires_at), (T0 + 10, T0 + 70));

    clock.advance(10);
    let revoked = h
        .client
        .revoke_key(h.server.admin(pb::RevokeKeyRequest { id: key.id.clone(), reason: String::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_at, T0 + 20);

    let at: Vec<i64> = h.changes(0, 0).await.changes.iter().map(|c| c.at).collect();
    assert_eq!(at, [T0, T0 + 10, T0 + 20]);

    // Stopping writes the pending last-use time.
    let dir = h.dir.path().to_owned();
    h.server.stop().await;
    use tollgate_keyd::Store;
    let store = tollgate_keyd::SqliteStore::open(&dir.join("keys.db")).unwrap();
    assert_eq!(store.get_key(&key.id).unwrap().last_used_at, T0);
    let audit: Vec<(String, i64)> =
        store.list_audit(0, 100).unwrap().into_iter().map(|a| (a.action, a.at)).collect();
    assert_eq!(
        audit,
        [
            ("consumer.create".to_owned(), T0),
            ("key.create".to_owned(), T0),
            ("key.rotate".to_owned(), T0 + 10),
            ("key.revoke".to_owned(), T0 + 20),
        ]
    );
}

fn usage_count(key_id: &str, minute: i64, outcome: &str, count: u64) -> pb::UsageCount {
    pb::UsageCount { key_id: key_id.into(), minute, outcome: outcome.into(), count, ..Default::default() }
}

#[tokio::test]
async fn gateways_report_usage_with_the_data_plane_token_and_admins_read_it_in_one_call() {
    let mut h = Harness::new().await;
    let admin = h.server.admin_token.clone();
    let alice = h.create_key("alice", &[]).await.key.unwrap();
    let bob = h.create_key("bob", &[]).await.key.unwrap();
    let minute = now() - now().rem_euclid(60);
    let report = pb::ReportUsageRequest {
        gateway: "envoy-1".into(),
        batch: 1,
        feed_seq: 2,
        counts: vec![
            usage_count(&alice.id, minute, "allowed", 50),
            usage_count(&alice.id, minute, "insufficient_scope", 3),
            usage_count(&bob.id, minute - 60, "allowed", 7),
            usage_count("key_unknown", minute, "allowed", 1),
        ],
    };
    // Only the data plane reports.
    let err = h.client.report_usage(with_token(report.clone(), &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let applied = h.client.report_usage(h.server.data(report.clone())).await.unwrap().into_inner();
    assert!(!applied.duplicate);
    assert_eq!(applied.skipped, 1, "the unknown key");
    // A retry of the same batch counts nothing again.
    let again = h.client.report_usage(h.server.data(report)).await.unwrap().into_inner();
    assert!(again.duplicate);

    // Only admins read.
    let query = pb::GetUsageRequest { since: minute - 3600, ..Default::default() };
    let err = h.client.get_usage(h.server.data(query.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let usage = h.client.get_usage(h.server.admin(query)).await.unwrap().into_inner();
    let summary: Vec<(&str, u64, u64)> =
        usage.keys.iter().map(|k| (k.consumer_id.as_str(), k.allowed, k.denied)).collect();
    assert_eq!(summary, [("alice", 50, 3), ("bob", 7, 0)]);
    assert_eq!(usage.keys[0].outcomes.get("insufficient_scope"), Some(&3));
    assert_eq!(usage.gateways.len(), 1);
    assert_eq!((usage.gateways[0].gateway.as_str(), usage.gateways[0].feed_seq), ("envoy-1", 2));
    assert!(usage.head_seq >= 2, "two keys created");
    // By consumer name.
    let bobs = pb::GetUsageRequest { consumer: "bob".into(), since: minute - 3600, ..Default::default() };
    let usage = h.client.get_usage(h.server.admin(bobs)).await.unwrap().into_inner();
    assert_eq!(usage.keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), [bob.id.as_str()]);
    // `last_used_at` follows the allowed minutes.
    let key = h.client.get_key(h.server.admin(pb::GetKeyRequest { id: alice.id.clone() })).await.unwrap();
    assert!(key.into_inner().last_used_at >= minute);
    h.server.stop().await;
}

#[tokio::test]
async fn a_malformed_usage_report_is_refused_naming_the_field_and_counts_nothing() {
    let mut h = Harness::new().await;
    let alice = h.create_key("alice", &[]).await.key.unwrap();
    let minute = now() - now().rem_euclid(60);
    let good = usage_count(&alice.id, minute, "allowed", 1);
    let cases: Vec<(pb::ReportUsageRequest, &str)> = vec![
        (pb::ReportUsageRequest { gateway: String::new(), ..Default::default() }, "gateway"),
        (pb::ReportUsageRequest { gateway: "a b".into(), ..Default::default() }, "gateway"),
        (pb::ReportUsageRequest { gateway: "gw".into(), batch: u64::MAX, ..Default::default() }, "batch"),
        (
            pb::ReportUsageRequest {
                gateway: "gw".into(),
                counts: vec![good.clone(), usage_count(&alice.id, minute + 1, "allowed", 1)],
                ..Default::default()
            },
            "counts[1].minute",
        ),
        (
            pb::ReportUsageRequest {
                gateway: "gw".into(),
                counts: vec![usage_count(&alice.id, minute, "Allowed<script>", 1)],
                ..Default::default()
            },
            "counts[0].outcome",
        ),
        (
            pb::ReportUsageRequest {
                gateway: "gw".into(),
                counts: vec![usage_count("", minute, "allowed", 1)],
                ..Default::default()
            },
            "counts[0]: must name exactly one of key_id",
        ),
        (
            pb::ReportUsageRequest {
                gateway: "gw".into(),
                counts: vec![good.clone(); 10_001],
                ..Default::default()
            },
            "counts",
        ),
    ];
    for (request, field) in cases {
        let err = h.client.report_usage(h.server.data(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let query = pb::GetUsageRequest { since: minute - 60, ..Default::default() };
    let usage = h.client.get_usage(h.server.admin(query)).await.unwrap().into_inner();
    assert!(usage.keys.is_empty(), "nothing of a refused report was counted: {:?}", usage.keys);
    let backwards = pb::GetUsageRequest { since: 100, until: 50, ..Default::default() };
    let err = h.client.get_usage(h.server.admin(backwards)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.server.stop().await;
}
