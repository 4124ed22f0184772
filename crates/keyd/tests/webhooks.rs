//! Webhook secret rotation and replay over real gRPC, with a real SQLite file: what is refused,
//! and with which message. Delivery itself is tested end to end (e2e/tests/webhooks.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, now, with_token};
use tollgate_proto::v1 as pb;
use tonic::Code;

/// A public address of the documentation range: accepted without --webhooks-allow-private, and
/// never contacted here (no event is caused).
const URL: &str = "https://192.0.2.10/hook";

async fn create_webhook(h: &mut Harness) -> pb::CreateWebhookResponse {
    let request = pb::CreateWebhookRequest { url: URL.into(), events: vec!["key.created".into()] };
    h.client.create_webhook(h.server.admin(request)).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_rotated_webhook_secret_is_new_and_shown_once_with_its_grace() {
    let mut h = Harness::new().await;
    let created = create_webhook(&mut h).await;
    let id = created.webhook.unwrap().id;
    let request = pb::RotateWebhookSecretRequest { id: id.clone(), grace_period_seconds: 3_600 };
    let started = now();
    let rotated = h.client.rotate_webhook_secret(h.server.admin(request)).await.unwrap().into_inner();
    assert!(rotated.secret.starts_with("whsec_"), "{}", rotated.secret);
    assert_ne!(rotated.secret, created.secret);
    let hook = rotated.webhook.unwrap();
    assert_eq!(hook.id, id);
    assert!((started + 3_600..=now() + 3_600).contains(&hook.previous_secret_expires_at), "{hook:?}");
    // Listed with its grace; the secrets never are.
    let listed =
        h.client.list_webhooks(h.server.admin(pb::ListWebhooksRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.webhooks[0].previous_secret_expires_at, hook.previous_secret_expires_at);
    // Without grace: no previous secret.
    let request = pb::RotateWebhookSecretRequest { id, grace_period_seconds: 0 };
    let rotated = h.client.rotate_webhook_secret(h.server.admin(request)).await.unwrap().into_inner();
    assert_eq!(rotated.webhook.unwrap().previous_secret_expires_at, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn bad_rotations_and_replays_are_refused_naming_the_field() {
    let mut h = Harness::new().await;
    let id = create_webhook(&mut h).await.webhook.unwrap().id;
    let rotate =
        |id: &str, grace: u64| pb::RotateWebhookSecretRequest { id: id.into(), grace_period_seconds: grace };
    let cases = [
        (rotate("", 60), Code::InvalidArgument, "id: is required".to_owned()),
        (
            rotate(&id, 31 * 86_400),
            Code::InvalidArgument,
            "grace_period_seconds: must be at most 2592000".to_owned(),
        ),
        (rotate("wh_none", 60), Code::NotFound, "webhook \"wh_none\" not found".to_owned()),
    ];
    for (request, code, message) in cases {
        let err = h.client.rotate_webhook_secret(h.server.admin(request)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, message.as_str()));
    }
    let replay = |since: i64, id: &str| pb::ReplayWebhooksRequest { since, webhook_id: id.into() };
    let cases = [
        (replay(0, ""), Code::InvalidArgument, "since: is required (Unix seconds)"),
        (replay(now() + 3_600, ""), Code::InvalidArgument, "since: is in the future"),
        (replay(1, "wh_none"), Code::NotFound, "webhook \"wh_none\" not found"),
    ];
    for (request, code, message) in cases {
        let err = h.client.replay_webhooks(h.server.admin(request)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, message));
    }
    // Nothing stored yet: nothing to replay, for one endpoint or all.
    let replayed = h.client.replay_webhooks(h.server.admin(replay(1, &id))).await.unwrap().into_inner();
    assert_eq!(replayed.requeued, 0);
    let replayed = h.client.replay_webhooks(h.server.admin(replay(1, ""))).await.unwrap().into_inner();
    assert_eq!(replayed.requeued, 0);
    // Both are admin calls.
    let data = h.server.dataplane_token.clone();
    let err = h.client.replay_webhooks(with_token(replay(1, ""), &data)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h.client.rotate_webhook_secret(with_token(rotate(&id, 0), &data)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    h.server.stop().await;
}

#[tokio::test]
async fn an_endpoint_is_disabled_enabled_and_changed_and_bad_changes_are_refused_naming_the_field() {
    let mut h = Harness::new().await;
    let id = create_webhook(&mut h).await.webhook.unwrap().id;
    let update =
        |enabled: Option<bool>| pb::UpdateWebhookRequest { id: id.clone(), enabled, ..Default::default() };

    let hook = h.client.update_webhook(h.server.admin(update(Some(false)))).await.unwrap().into_inner();
    let hook = hook.webhook.unwrap();
    assert!(!hook.enabled);
    assert_eq!(hook.disabled_reason, "disabled by admin-token");
    let hook = h.client.update_webhook(h.server.admin(update(Some(true)))).await.unwrap().into_inner();
    let hook = hook.webhook.unwrap();
    assert!(hook.enabled && hook.disabled_reason.is_empty(), "{hook:?}");
    let request = pb::UpdateWebhookRequest {
        id: id.clone(),
        url: Some("https://192.0.2.11/moved".into()),
        events: vec!["key.revoked".into(), "key.created".into()],
        enabled: None,
    };
    let hook = h.client.update_webhook(h.server.admin(request)).await.unwrap().into_inner().webhook.unwrap();
    assert_eq!(
        (hook.url.as_str(), hook.events.as_slice()),
        ("https://192.0.2.11/moved", &["key.revoked".to_owned(), "key.created".to_owned()][..])
    );
    assert!(hook.enabled);
    let listed =
        h.client.list_webhooks(h.server.admin(pb::ListWebhooksRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.webhooks, [hook]);

    let with = |id: &str, url: Option<&str>, events: &[&str]| pb::UpdateWebhookRequest {
        id: id.into(),
        url: url.map(str::to_owned),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        enabled: None,
    };
    let cases = [
        (with("", None, &["key.created"]), Code::InvalidArgument, "id: is required"),
        (
            with(&id, None, &[]),
            Code::InvalidArgument,
            "request: changes nothing: give url, events or enabled",
        ),
        (with(&id, Some(""), &[]), Code::InvalidArgument, "url: is required"),
        (
            with(&id, Some("ftp://example.com/"), &[]),
            Code::InvalidArgument,
            "url: scheme \"ftp\" is not http or https",
        ),
        (with(&id, None, &["key.created", "key.gone"]), Code::InvalidArgument, ""),
        (with("wh_none", None, &["key.created"]), Code::NotFound, "webhook \"wh_none\" not found"),
    ];
    for (request, code, message) in cases {
        let err = h.client.update_webhook(h.server.admin(request)).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        if message.is_empty() {
            assert!(err.message().starts_with("events[1]: \"key.gone\" is not one of"), "{}", err.message());
        } else {
            assert_eq!(err.message(), message);
        }
    }
    // A private target is refused as at creation.
    let err = h
        .client
        .update_webhook(h.server.admin(with(&id, Some("http://127.0.0.1:9/"), &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("--webhooks-allow-private"), "{}", err.message());
    // Nothing refused changed the endpoint.
    let after =
        h.client.list_webhooks(h.server.admin(pb::ListWebhooksRequest {})).await.unwrap().into_inner();
    assert_eq!(after.webhooks, listed.webhooks);
    // An admin call.
    let data = h.server.dataplane_token.clone();
    let err = h.client.update_webhook(with_token(update(Some(false)), &data)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    h.server.stop().await;
}
