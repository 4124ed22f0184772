//! The gRPC handlers: thin wrappers that validate, call the store off the async runtime, and
//! convert the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::master::MasterKeys;
use crate::model::{
    ConsumerPatch, Ctx, KeyFilter, KeyPatch, NewConsumer, NewKey, NewSigning, Rotation, SigningAlgorithm,
    StoredSecret,
};
use crate::secrets::{self, Pepper};
use crate::store::Store;
use crate::webhooks::{self, NewWebhook, WebhookUpdate};
use crate::{convert, validate};

/// Last-use times seen by VerifyKey, written to the store in batches so that verifying never
/// waits for a write.
#[derive(Debug, Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<String, i64>>,
    /// The same for previous secrets (during a rotation's grace), by key id.
    previous: Mutex<HashMap<String, i64>>,
}

impl UsageTracker {
    /// Notes a use. A poisoned lock only loses the note.
    pub fn record(&self, key_id: &str, at: i64) {
        Self::note(&self.pending, key_id, at);
    }

    /// Notes a use of a key's previous secret.
    pub fn record_previous(&self, key_id: &str, at: i64) {
        Self::note(&self.previous, key_id, at);
    }

    fn note(map: &Mutex<HashMap<String, i64>>, key_id: &str, at: i64) {
        if let Ok(mut pending) = map.lock() {
            let entry = pending.entry(key_id.to_owned()).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// Takes the pending notes.
    pub fn drain(&self) -> Vec<(String, i64)> {
        Self::take(&self.pending)
    }

    fn take(map: &Mutex<HashMap<String, i64>>) -> Vec<(String, i64)> {
        match map.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Writes the pending notes to the store.
    pub async fn flush(&self, store: &Arc<dyn Store>) -> Result<()> {
        let previous = Self::take(&self.previous);
        if !previous.is_empty() {
            blocking(store, move |s| s.record_previous_use(&previous)).await?;
        }
        let used = self.drain();
        if used.is_empty() {
            return Ok(());
        }
        blocking(store, move |s| s.record_usage(&used)).await
    }
}

/// Runs a store call on the blocking thread pool.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| Error::internal("storage task", e))?
}

/// Changes a WatchChanges stream holds for a slow client, besides what its watcher holds.
const WATCH_BUFFER: usize = 64;

/// The `KeyService` implementation.
#[derive(Clone)]
pub struct KeyServiceImpl {
    store: Arc<dyn Store>,
    pepper: Arc<Pepper>,
    usage: Arc<UsageTracker>,
    /// Serves WatchChanges streams; told after every committed mutation.
    feed: Feed,
    /// Encrypts and decrypts HMAC signing secrets; without it, HMAC signing keys are refused.
    master: Option<Arc<MasterKeys>>,
    /// Every time the service uses: expiry, rotation grace, audit, feed and last-use times.
    clock: Arc<dyn Clock>,
    /// Webhook endpoints may point at loopback, private, link-local and metadata addresses.
    webhooks_allow_private: bool,
}

impl KeyServiceImpl {
    /// A service over `store`, with `feed` (reading the same store) for WatchChanges, reading
    /// the time from `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        pepper: Pepper,
        usage: Arc<UsageTracker>,
        feed: Feed,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            pepper: Arc::new(pepper),
            usage,
            feed,
            master: None,
            clock,
            webhooks_allow_private: false,
        }
    }

    /// Lets webhook endpoints point at loopback, private, link-local and metadata addresses.
    pub fn with_webhooks_allow_private(mut self, allow: bool) -> Self {
        self.webhooks_allow_private = allow;
        self
    }

    /// Adds the master keys that protect HMAC signing secrets.
    pub fn with_master_keys(mut self, master: MasterKeys) -> Self {
        self.master = Some(Arc::new(master));
        self
    }

    fn master(&self) -> Result<&MasterKeys> {
        self.master.as_deref().ok_or_else(|| {
            Error::FailedPrecondition("no master key is configured for signing secrets".to_owned())
        })
    }

    fn ctx<T>(&self, request: &Request<T>) -> Ctx {
        let actor = request.extensions().get::<Role>().map_or("unknown", |r| r.as_str());
        Ctx { actor: actor.to_owned(), now: self.clock.now() }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        blocking(&self.store, f).await
    }

    /// Runs a mutation and wakes the change-feed watchers after it commits.
    async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out = self.run(f).await?;
        self.feed.notify();
        Ok(out)
    }

    /// A webhook target: http(s), and not private unless the service allows it.
    async fn check_webhook_url(&self, url: &str) -> Result<()> {
        validate::required("url", url)?;
        let target = webhooks::guard::parse(url)?;
        webhooks::guard::resolve(&target, self.webhooks_allow_private).await?;
        Ok(())
    }

    fn new_secret(&self) -> Result<(String, StoredSecret)> {
        let key = secrets::new_api_key()?;
        let hash = self.pepper.stored_hash(&tollgate_core::key::key_hash(&key))?;
        let display_prefix = tollgate_core::key::display_prefix(&key).to_owned();
        Ok((key, StoredSecret { hash, display_prefix }))
    }
}

/// The grace a key's owner's own rotation gives the previous secret when no policy says.
pub const SELF_ROTATION_GRACE: i64 = 86_400;

/// What a key's owner gets from [`KeyServiceImpl::self_rotate`].
#[derive(Debug)]
pub struct SelfRotation {
    pub key: crate::model::Key,
    /// The new secret, shown this once.
    pub secret: String,
    /// The secret an automatic rotation left, picked up with the previous secret; otherwise the
    /// presented (current) secret was rotated now.
    pub picked_up: bool,
}

impl KeyServiceImpl {
    /// A key's owner rotates it with its current secret (the previous one keeps working for the
    /// policy's grace, or [`SELF_ROTATION_GRACE`]), or picks up, with the previous secret during
    /// the grace, the new secret an automatic rotation made (once).
    pub async fn self_rotate(&self, presented: &str) -> Result<SelfRotation> {
        const REFUSED: &str = "a valid, current API key is required";
        if presented.is_empty() || presented.len() > 1_024 {
            return Err(Error::Unauthenticated(REFUSED));
        }
        let stored = self.pepper.stored_hash(&tollgate_core::key::key_hash(presented))?;
        let lookup = self.run(move |s| s.lookup_secret(&stored)).await?;
        let now = self.clock.now();
        let Some(found) = lookup.found else {
            return Err(Error::Unauthenticated(REFUSED));
        };
        let key = found.key;
        if key.status(now) != crate::model::KeyStatus::Active
            || crate::model::has_passed(found.expires_at, now)
        {
            return Err(Error::Unauthenticated(REFUSED));
        }
        let ctx = Ctx { actor: "key-owner".to_owned(), now };
        if found.expires_at == 0 {
            let key_id = key.id.clone();
            let grace = self
                .run(move |s| s.effective_policy(&key_id))
                .await?
                .map_or(SELF_ROTATION_GRACE, |p| p.grace);
            let (secret, stored) = self.new_secret()?;
            let rotation = Rotation {
                key_id: key.id.clone(),
                secret: stored,
                grace_end: now.saturating_add(grace),
                pending: None,
                expect_birth: Some(crate::lifecycle::birth(&key)),
            };
            let key = self.mutate(move |s| s.rotate_key(&ctx, rotation)).await?;
            tracing::info!(
                target: "tollgate_keyd::audit", actor = "key-owner", action = "key.rotate",
                key_id = %key.id,
                display_prefix = %key.display_prefix,
                "audit"
            );
            return Ok(SelfRotation { key, secret, picked_up: false });
        }
        let key_id = key.id.clone();
        let sealed = self.mutate(move |s| s.take_pending_secret(&ctx, &key_id)).await?;
        let Some(sealed) = sealed else {
            return Err(Error::FailedPrecondition(
                "this secret has been replaced: rotate with the current one".to_owned(),
            ));
        };
        let secret = self.master()?.open(&crate::lifecycle::scheduler::pending_aad(&key.id), &sealed)?;
        let secret = String::from_utf8(secret).map_err(|e| Error::internal("pending secret", e))?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = "key-owner", action = "key.pickup",
            key_id = %key.id,
            "audit"
        );
        Ok(SelfRotation { key, secret, picked_up: true })
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Most delivery-log rows one ListWebhookDeliveries returns.
const MAX_DELIVERIES: u32 = 1_000;

#[tonic::async_trait]
impl KeyService for KeyServiceImpl {
    async fn create_consumer(&self, request: Request<pb::CreateConsumerRequest>) -> Reply<pb::Consumer> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        let id = if req.id.is_empty() {
            secrets::new_consumer_id()?
        } else {
            validate::consumer_id("id", &req.id)?;
            req.id
        };
        let name = if req.name.is_empty() { id.clone() } else { req.name };
        validate::name("name", &name)?;
        let metadata = validate::metadata("metadata", req.metadata)?;
        let new = NewConsumer { id, name, metadata };
        let consumer = self.mutate(move |s| s.create_consumer(&ctx, new)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "consumer.create", consumer_id = %consumer.id, "audit");
        Ok(Response::new(convert::consumer_to_proto(consumer)))
    }

    async fn get_consumer(&self, request: Request<pb::GetConsumerRequest>) -> Reply<pb::Consumer> {
        let id = request.into_inner().id;
        validate::required("id", &id)?;
        let consumer = self.run(move |s| s.get_consumer(&id)).await?;
        Ok(Response::new(convert::consumer_to_proto(consumer)))
    }

    async fn list_consumers(
        &self,
        request: Request<pb::ListConsumersRequest>,
    ) -> Reply<pb::ListConsumersResponse> {
        let req = request.into_inner();
        let size = validate::page_size(req.page_size);
        let after = validate::decode_page_token(&req.page_token)?;
        // One extra row tells whether there is a next page.
        let mut consumers = self.run(move |s| s.list_consumers(after, size + 1)).await?;
        let next_page_token = if consumers.len() > size {
            consumers.truncate(size);
            consumers.last().map(|c| validate::encode_page_token(c.position)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListConsumersResponse {
            consumers: consumers.into_iter().map(convert::consumer_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_consumer(&self, request: Request<pb::UpdateConsumerRequest>) -> Reply<pb::Consumer> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        if let Some(name) = &req.name {
            validate::required("name", name)?;
            validate::name("name", name)?;
        }
        let metadata = req.metadata.map(|m| validate::metadata("metadata", m.entries)).transpose()?;
        let patch = ConsumerPatch { name: req.name, metadata };
        let id = req.id;
        let consumer = self.mutate(move |s| s.update_consumer(&ctx, &id, patch)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "consumer.update", consumer_id = %consumer.id, "audit");
        Ok(Response::new(convert::consumer_to_proto(consumer)))
    }

    async fn delete_consumer(
        &self,
        request: Request<pb::DeleteConsumerRequest>,
    ) -> Reply<pb::DeleteConsumerResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let id = request.into_inner().id;
        validate::required("id", &id)?;
        let log_id = id.clone();
        let revoked_keys = self.mutate(move |s| s.delete_consumer(&ctx, &id)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "consumer.delete", consumer = %log_id, revoked_keys, "audit");
        Ok(Response::new(pb::DeleteConsumerResponse { revoked_keys }))
    }

    async fn create_key(&self, request: Request<pb::CreateKeyRequest>) -> Reply<pb::CreateKeyResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let now = ctx.now;
        let req = request.into_inner();
        validate::required("consumer", &req.consumer)?;
        validate::name("consumer", &req.consumer)?;
        validate::name("name", &req.name)?;
        let scopes = validate::scopes("scopes", req.scopes)?;
        let metadata = validate::metadata("metadata", req.metadata)?;
        let rate_limit = validate::rate_limit("rate_limit", req.rate_limit)?;
        let expires_at = validate::expiry(req.expires_at, req.ttl_seconds, now)?;
        let create_consumer = if req.create_consumer {
            let id = if validate::is_valid_consumer_id(&req.consumer) {
                req.consumer.clone()
            } else {
                secrets::new_consumer_id()?
            };
            Some(NewConsumer { id, name: req.consumer.clone(), metadata: Default::default() })
        } else {
            None
        };
        let (secret, stored) = self.new_secret()?;
        let key_id = secrets::new_key_id()?;
        let (signing, signing_secret) =
            match validate::signing_request(req.signing_algorithm, &req.signing_public_key)? {
                None => (None, Vec::new()),
                Some((SigningAlgorithm::Ed25519, Some(public_key))) => {
                    (Some(NewSigning::Ed25519(public_key)), Vec::new())
                }
                Some((SigningAlgorithm::Ed25519, None)) => {
                    return Err(Error::invalid("signing_public_key", "is required for ED25519").into());
                }
                Some((SigningAlgorithm::HmacSha256, _)) => {
                    let secret = secrets::random_bytes::<32>()?.to_vec();
                    let sealed = self.master()?.seal(&key_id, &secret)?;
                    (Some(NewSigning::Hmac(sealed)), secret)
                }
            };
        let new = NewKey {
            id: key_id,
            consumer: req.consumer,
            create_consumer,
            name: req.name,
            scopes,
            metadata,
            rate_limit,
            expires_at,
            secret: stored,
            signing,
        };
        let key = self.mutate(move |s| s.create_key(&ctx, new)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "key.create",
            key_id = %key.id,
            consumer_id = %key.consumer_id,
            display_prefix = %key.display_prefix,
            "audit"
        );
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(convert::key_to_proto(key, now)),
            secret,
            signing_secret,
        }))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Reply<pb::Key> {
        let id = request.into_inner().id;
        validate::required("id", &id)?;
        let key = self.run(move |s| s.get_key(&id)).await?;
        Ok(Response::new(convert::key_to_proto(key, self.clock.now())))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Reply<pb::ListKeysResponse> {
        let req = request.into_inner();
        let size = validate::page_size(req.page_size);
        let after = validate::decode_page_token(&req.page_token)?;
        let status = validate::status_filter(req.status)?;
        let now = self.clock.now();
        let consumer = req.consumer;
        let mut keys = self
            .run(move |s| {
                let consumer_id = if consumer.is_empty() {
                    None
                } else {
                    // A deleted consumer's keys stay listable by its id.
                    match s.get_consumer(&consumer) {
                        Ok(c) => Some(c.id),
                        Err(Error::NotFound { .. }) => Some(consumer),
                        Err(e) => return Err(e),
                    }
                };
                s.list_keys(&KeyFilter { consumer_id, status, now }, after, size + 1)
            })
            .await?;
        let next_page_token = if keys.len() > size {
            keys.truncate(size);
            keys.last().map(|k| validate::encode_page_token(k.position)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(|k| convert::key_to_proto(k, now)).collect(),
            next_page_token,
        }))
    }

    async fn update_key(&self, request: Request<pb::UpdateKeyRequest>) -> Reply<pb::Key> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let now = ctx.now;
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        if let Some(name) = &req.name {
            validate::name("name", name)?;
        }
        let patch = KeyPatch {
            name: req.name,
            scopes: req.scopes.map(|s| validate::scopes("scopes.values", s.values)).transpose()?,
            metadata: req.metadata.map(|m| validate::metadata("metadata", m.entries)).transpose()?,
            rate_limit: match req.rate_limit {
                Some(policy) => Some(validate::rate_limit("rate_limit", Some(policy))?),
                None => None,
            },
            expires_at: req.expires_at.map(|at| validate::future_time("expires_at", at, now)).transpose()?,
        };
        let id = req.id;
        let key = self.mutate(move |s| s.update_key(&ctx, &id, patch)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "key.update", key_id = %key.id, consumer_id = %key.consumer_id, "audit");
        Ok(Response::new(convert::key_to_proto(key, now)))
    }

    async fn revoke_key(&self, request: Request<pb::RevokeKeyRequest>) -> Reply<pb::Key> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let now = ctx.now;
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        validate::reason(&req.reason)?;
        let (id, reason) = (req.id, req.reason);
        let key = self.mutate(move |s| s.revoke_key(&ctx, &id, &reason)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "key.revoke",
            key_id = %key.id,
            consumer_id = %key.consumer_id,
            display_prefix = %key.display_prefix,
            "audit"
        );
        Ok(Response::new(convert::key_to_proto(key, now)))
    }

    async fn rotate_key(&self, request: Request<pb::RotateKeyRequest>) -> Reply<pb::RotateKeyResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let now = ctx.now;
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        let grace_end = validate::grace_end(req.grace_period_seconds, now)?;
        let (secret, stored) = self.new_secret()?;
        let rotation =
            Rotation { key_id: req.id, secret: stored, grace_end, pending: None, expect_birth: None };
        let key = self.mutate(move |s| s.rotate_key(&ctx, rotation)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "key.rotate",
            key_id = %key.id,
            consumer_id = %key.consumer_id,
            display_prefix = %key.display_prefix,
            previous_display_prefix = %key.previous_display_prefix,
            previous_expires_at = key.previous_expires_at,
            "audit"
        );
        Ok(Response::new(pb::RotateKeyResponse { key: Some(convert::key_to_proto(key, now)), secret }))
    }

    async fn set_rotation_policy(
        &self,
        request: Request<pb::SetRotationPolicyRequest>,
    ) -> Reply<pb::RotationPolicyRecord> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        let target = validate::policy_target(&req.consumer, &req.key_id)?;
        let policy = convert::policy_from_proto(req.policy)?;
        let record = self.mutate(move |s| s.set_rotation_policy(&ctx, &target, &policy)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "policy.set",
            consumer_id = %record.consumer_id,
            key_id = %record.key_id,
            "audit"
        );
        Ok(Response::new(convert::policy_record_to_proto(record)))
    }

    async fn list_rotation_policies(
        &self,
        request: Request<pb::ListRotationPoliciesRequest>,
    ) -> Reply<pb::ListRotationPoliciesResponse> {
        let consumer = request.into_inner().consumer;
        let consumer = (!consumer.is_empty()).then_some(consumer);
        let policies = self.run(move |s| s.list_rotation_policies(consumer.as_deref())).await?;
        Ok(Response::new(pb::ListRotationPoliciesResponse {
            policies: policies.into_iter().map(convert::policy_record_to_proto).collect(),
        }))
    }

    async fn delete_rotation_policy(
        &self,
        request: Request<pb::DeleteRotationPolicyRequest>,
    ) -> Reply<pb::DeleteRotationPolicyResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        let target = validate::policy_target(&req.consumer, &req.key_id)?;
        let logged = format!("{target:?}");
        self.mutate(move |s| s.delete_rotation_policy(&ctx, &target)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "policy.delete", policy = %logged, "audit");
        Ok(Response::new(pb::DeleteRotationPolicyResponse {}))
    }

    async fn verify_key(&self, request: Request<pb::VerifyKeyRequest>) -> Reply<pb::VerifyKeyResponse> {
        let key_hash = validate::key_hash(&request.into_inner().key_hash)?;
        let stored = self.pepper.stored_hash(&key_hash)?;
        // VerifyKey is the data plane's hot call and its read is one primary-key lookup on a
        // connection only lookups use (microseconds, the pages in memory, never behind a scan):
        // it runs right here, which costs less than handing it to the blocking pool and back
        // (20k calls/s on one core that way, twice that in place).
        let lookup = self.store.lookup_secret(&stored)?;
        let now = self.clock.now();
        let response = convert::verify_response(lookup, now);
        if response.result == pb::VerifyResult::Valid as i32 {
            self.usage.record(&response.key_id, now);
            if response.previous_secret {
                self.usage.record_previous(&response.key_id, now);
            }
        }
        tracing::debug!(
            result = response.result,
            key_id = %response.key_id,
            display_prefix = %response.display_prefix,
            "verify"
        );
        Ok(Response::new(response))
    }

    async fn get_signing_key(
        &self,
        request: Request<pb::GetSigningKeyRequest>,
    ) -> Reply<pb::GetSigningKeyResponse> {
        let key_id = request.into_inner().key_id;
        validate::required("key_id", &key_id)?;
        let lookup_id = key_id.clone();
        let lookup = self.run(move |s| s.get_signing(&lookup_id)).await?;
        let now = self.clock.now();
        let mut response =
            pb::GetSigningKeyResponse { key_id, feed_seq: lookup.head_seq, ..Default::default() };
        let Some((key, signing)) = lookup.found else {
            response.result = pb::VerifyResult::NotFound as i32;
            tracing::debug!(key_id = %response.key_id, result = response.result, "signing key lookup");
            return Ok(Response::new(response));
        };
        response.consumer_id = key.consumer_id.clone();
        response.expires_at = key.expires_at;
        response.algorithm = convert::signing_algorithm_to_proto(signing.algorithm()) as i32;
        response.result = match key.status(now) {
            crate::model::KeyStatus::Active => pb::VerifyResult::Valid,
            crate::model::KeyStatus::Revoked => pb::VerifyResult::Revoked,
            crate::model::KeyStatus::Expired => pb::VerifyResult::Expired,
        } as i32;
        if response.result == pb::VerifyResult::Valid as i32 {
            match &signing {
                NewSigning::Ed25519(public_key) => response.ed25519_public_key = public_key.to_vec(),
                NewSigning::Hmac(sealed) => response.hmac_secret = self.master()?.open(&key.id, sealed)?,
            }
            self.usage.record(&key.id, now);
        }
        tracing::debug!(key_id = %response.key_id, result = response.result, "signing key lookup");
        Ok(Response::new(response))
    }

    async fn list_changes(&self, request: Request<pb::ListChangesRequest>) -> Reply<pb::ListChangesResponse> {
        // A plain poll: counted as a feed reader while it is served.
        let _reading = self.feed.reading();
        let req = request.into_inner();
        let limit = validate::change_limit(req.limit);
        let after = req.after_seq;
        let (changes, head_seq) = self.run(move |s| s.list_changes(after, limit)).await?;
        Ok(Response::new(pb::ListChangesResponse {
            changes: changes.into_iter().map(convert::change_to_proto).collect(),
            head_seq,
        }))
    }

    async fn report_usage(&self, request: Request<pb::ReportUsageRequest>) -> Reply<pb::ReportUsageResponse> {
        let request = request.into_inner();
        // Keys whose previous secret the gateway let through, from its cache or not: a use for
        // a rotation policy's revoke_unused_previous_after, as of this report.
        let previous: std::collections::BTreeSet<String> = request
            .counts
            .iter()
            .filter(|c| c.previous_secret && c.outcome == "allowed" && !c.key_id.is_empty())
            .map(|c| c.key_id.clone())
            .collect();
        let report = validate::usage_report(request)?;
        let now = self.clock.now();
        if !previous.is_empty() {
            // Written at once, not with the next usage flush: the lifecycle scheduler reads it.
            // Before the counts, and for a batch sent again too: a last use only moves forward,
            // so a batch whose answer was lost still tells of the use.
            let used: Vec<(String, i64)> = previous.into_iter().map(|key_id| (key_id, now)).collect();
            self.run(move |s| s.record_previous_use(&used)).await?;
        }
        let (gateway, batch, counts) = (report.gateway.clone(), report.batch, report.counts.len());
        let applied = self.run(move |s| s.report_usage(&report, now)).await?;
        tracing::debug!(%gateway, batch, counts, duplicate = applied.duplicate, skipped = applied.skipped, "usage report");
        Ok(Response::new(pb::ReportUsageResponse { duplicate: applied.duplicate, skipped: applied.skipped }))
    }

    async fn purge_cache(&self, request: Request<pb::PurgeCacheRequest>) -> Reply<pb::PurgeCacheResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let purge = validate::cache_purge(request.into_inner().purge)?;
        let logged = purge.clone();
        let seq = self.mutate(move |s| s.purge_cache(&ctx, &purge)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "cache.purge",
            purge = ?logged.target, host = %logged.host, soft = logged.soft, seq,
        );
        Ok(Response::new(pb::PurgeCacheResponse { seq }))
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Reply<pb::GetUsageResponse> {
        let req = request.into_inner();
        let mut query = validate::usage_query(&req, self.clock.now())?;
        let consumer = req.consumer;
        // The consumer and its usage in one trip to the store.
        let ((keys, gateways, head_seq), (subjects, limits)) = self
            .run(move |s| {
                if !consumer.is_empty() {
                    query.consumer_id = Some(s.get_consumer(&consumer)?.id);
                }
                Ok((s.usage(&query)?, s.caller_usage(&query)?))
            })
            .await?;
        Ok(Response::new(pb::GetUsageResponse {
            keys: keys.into_iter().map(convert::key_usage_to_proto).collect(),
            gateways: gateways
                .into_iter()
                .map(|g| pb::GatewayReport {
                    gateway: g.gateway,
                    last_report_at: g.last_report_at,
                    feed_seq: g.feed_seq,
                })
                .collect(),
            head_seq,
            subjects: subjects
                .into_iter()
                .map(|s| pb::SubjectUsage { subject: s.subject, outcomes: s.outcomes.into_iter().collect() })
                .collect(),
            limits: limits
                .into_iter()
                .map(|l| pb::LimitUsage { consumer_id: l.consumer_id, rule: l.rule, limited: l.limited })
                .collect(),
        }))
    }

    type WatchChangesStream = ReceiverStream<std::result::Result<pb::Change, Status>>;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Reply<Self::WatchChangesStream> {
        let mut watcher = self.feed.watch(request.into_inner().after_seq);
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = watcher.next() => next,
                    () = tx.closed() => return,
                };
                // `None`: the server is shutting down; the stream ends and the client resumes
                // from the last seq it got.
                let Some(next) = next else { return };
                let failed = next.is_err();
                tokio::select! {
                    sent = tx.send(next.map_err(Status::from)) => if sent.is_err() || failed { return },
                    () = watcher.stopped() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Reply<pb::CreateWebhookResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        self.check_webhook_url(&req.url).await?;
        let events = validate::webhook_events("events", &req.events)?;
        let id = webhooks::new_webhook_id()?;
        let (secret_bytes, secret) = webhooks::sign::new_secret()?;
        let sealed = self.master()?.seal(&id, &secret_bytes)?;
        let new = NewWebhook { id, url: req.url, events, sealed };
        let hook = self.run(move |s| s.create_webhook(&ctx, new)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "webhook.create", webhook_id = %hook.id, "audit");
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(convert::webhook_to_proto(hook)),
            secret,
        }))
    }

    async fn list_webhooks(
        &self,
        _request: Request<pb::ListWebhooksRequest>,
    ) -> Reply<pb::ListWebhooksResponse> {
        let hooks = self.run(|s| s.list_webhooks()).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: hooks.into_iter().map(convert::webhook_to_proto).collect(),
        }))
    }

    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Reply<pb::UpdateWebhookResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        if let Some(url) = &req.url {
            self.check_webhook_url(url).await?;
        }
        let events =
            if req.events.is_empty() { None } else { Some(validate::webhook_events("events", &req.events)?) };
        let update = WebhookUpdate { url: req.url, events, enabled: req.enabled };
        if update == WebhookUpdate::default() {
            return Err(Error::invalid("request", "changes nothing: give url, events or enabled").into());
        }
        let id = req.id;
        // Wakes the delivery task: an endpoint enabled again sends what it had pending now.
        let hook = self.mutate(move |s| s.update_webhook(&ctx, &id, &update)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "webhook.update",
            webhook_id = %hook.id, enabled = hook.enabled,
            "audit"
        );
        Ok(Response::new(pb::UpdateWebhookResponse { webhook: Some(convert::webhook_to_proto(hook)) }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Reply<pb::DeleteWebhookResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let id = request.into_inner().id;
        validate::required("id", &id)?;
        let log_id = id.clone();
        self.run(move |s| s.delete_webhook(&ctx, &id)).await?;
        tracing::info!(target: "tollgate_keyd::audit", actor = %actor, action = "webhook.delete", webhook_id = %log_id, "audit");
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Reply<pb::ListWebhookDeliveriesResponse> {
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(MAX_DELIVERIES),
        };
        let limit = usize::try_from(limit).unwrap_or(100);
        let webhook_id = (!req.webhook_id.is_empty()).then_some(req.webhook_id);
        let attempts = self.run(move |s| s.list_webhook_attempts(webhook_id.as_deref(), limit)).await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: attempts.into_iter().map(convert::webhook_delivery_to_proto).collect(),
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        validate::required("id", &req.id)?;
        let previous_expires_at = validate::grace_end(req.grace_period_seconds, ctx.now)?;
        let (secret_bytes, secret) = webhooks::sign::new_secret()?;
        let sealed = self.master()?.seal(&req.id, &secret_bytes)?;
        let id = req.id;
        let hook = self.run(move |s| s.rotate_webhook_secret(&ctx, &id, sealed, previous_expires_at)).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "webhook.rotate_secret",
            webhook_id = %hook.id,
            previous_secret_expires_at = hook.previous_secret_expires_at,
            "audit"
        );
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook: Some(convert::webhook_to_proto(hook)),
            secret,
        }))
    }

    async fn replay_webhooks(
        &self,
        request: Request<pb::ReplayWebhooksRequest>,
    ) -> Reply<pb::ReplayWebhooksResponse> {
        let ctx = self.ctx(&request);
        let actor = ctx.actor.clone();
        let req = request.into_inner();
        let since = validate::replay_since(req.since, ctx.now)?;
        let webhook_id = (!req.webhook_id.is_empty()).then_some(req.webhook_id);
        let logged = webhook_id.clone().unwrap_or_default();
        let requeued =
            self.mutate(move |s| s.replay_webhook_messages(&ctx, since, webhook_id.as_deref())).await?;
        tracing::info!(
            target: "tollgate_keyd::audit", actor = %actor, action = "webhook.replay",
            webhook_id = %logged, since, requeued,
            "audit"
        );
        Ok(Response::new(pb::ReplayWebhooksResponse { requeued }))
    }
}
