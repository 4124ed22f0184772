//! `tollgate keys …`: create, list, get, update, revoke and rotate keys.

use tollgate_proto::v1::{
    CreateKeyRequest, GetKeyRequest, KeyStatus, ListKeysRequest, Metadata, RateLimitPolicy, RevokeKeyRequest,
    RotateKeyRequest, Scopes, UpdateKeyRequest,
};

use super::{metadata_map, more_hint};
use crate::Output;
use crate::args::{KeysCommand, KeysCreate, KeysUpdate, SigningKind};
use crate::client::{CliError, Client};
use crate::output::{self, IssuedKeyView, KeyView};
use crate::parse;

/// Runs one `keys` command.
pub async fn run(cmd: KeysCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Create(args) => {
            let (signing_algorithm, signing_public_key) = signing_fields(&args)?;
            let request = CreateKeyRequest {
                consumer: args.consumer,
                create_consumer: true,
                name: args.name.unwrap_or_default(),
                scopes: args.scopes,
                metadata: metadata_map(args.meta)?,
                rate_limit: args.rate.policy()?,
                expires_at: args.expires_at.unwrap_or(0),
                ttl_seconds: args.ttl.unwrap_or(0),
                signing_algorithm,
                signing_public_key,
            };
            let response = client.create_key(request).await?.into_inner();
            let key = response.key.unwrap_or_default();
            let signing_secret = (!response.signing_secret.is_empty()).then(|| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&response.signing_secret)
            });
            if o.json {
                let view = IssuedKeyView { key: KeyView::from(&key), secret: response.secret };
                let mut value = serde_json::to_value(&view).map_err(|e| CliError::Other(e.to_string()))?;
                if let (Some(secret), Some(map)) = (&signing_secret, value.as_object_mut()) {
                    map.insert("signing_secret".to_owned(), serde_json::Value::String(secret.clone()));
                }
                output::write_json(o.out, &value)?;
            } else {
                writeln!(o.out, "Created key {} for consumer {}.", key.id, key.consumer_id)?;
                output::write_secret(o.out, &response.secret)?;
                if let Some(secret) = &signing_secret {
                    writeln!(o.out, "HMAC signing secret (base64, shown once): {secret}")?;
                }
                writeln!(o.out)?;
                output::write_key_detail(o.out, &key)?;
            }
        }
        KeysCommand::List(args) => {
            let mut request = ListKeysRequest {
                consumer: args.consumer.unwrap_or_default(),
                status: args.status.map(KeyStatus::from).unwrap_or(KeyStatus::Unspecified) as i32,
                page_size: args.page.limit.unwrap_or(0),
                page_token: args.page.page_token.unwrap_or_default(),
            };
            let mut keys = Vec::new();
            let next = loop {
                let page = client.list_keys(request.clone()).await?.into_inner();
                keys.extend(page.keys);
                if !args.page.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            if o.json {
                let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                output::write_key_table(o.out, &keys)?;
            }
            more_hint(o, &next)?;
        }
        KeysCommand::Get { id } => {
            let key = client.get_key(GetKeyRequest { id }).await?.into_inner();
            write_key(o, &key)?;
        }
        KeysCommand::Update(args) => {
            let request = update_request(args, parse::now_secs())?;
            let key = client.update_key(request).await?.into_inner();
            write_key(o, &key)?;
        }
        KeysCommand::Revoke { id, reason } => {
            let request = RevokeKeyRequest { id, reason: reason.unwrap_or_default() };
            let key = client.revoke_key(request).await?.into_inner();
            if !o.json {
                writeln!(o.out, "Revoked key {}.", key.id)?;
            }
            write_key(o, &key)?;
        }
        KeysCommand::Rotate { id, grace } => {
            let request = RotateKeyRequest { id, grace_period_seconds: grace };
            let response = client.rotate_key(request).await?.into_inner();
            let key = response.key.unwrap_or_default();
            if o.json {
                let view = IssuedKeyView { key: KeyView::from(&key), secret: response.secret };
                output::write_json(o.out, &view)?;
            } else {
                writeln!(o.out, "Rotated key {}.", key.id)?;
                output::write_secret(o.out, &response.secret)?;
                let old = if key.previous_display_prefix.is_empty() {
                    "The previous key".to_owned()
                } else {
                    format!("The previous key ({}...)", key.previous_display_prefix)
                };
                match parse::rfc3339(key.previous_expires_at) {
                    Some(at) if grace > 0 => writeln!(o.out, "{old} keeps working until {at}.")?,
                    _ => writeln!(o.out, "{old} stopped working now.")?,
                }
            }
        }
    }
    Ok(())
}

/// Builds an `UpdateKeyRequest`; fields not given stay as they are.
pub fn update_request(args: KeysUpdate, now: i64) -> Result<UpdateKeyRequest, CliError> {
    let scopes = if args.clear_scopes {
        Some(Scopes { values: Vec::new() })
    } else if args.scopes.is_empty() {
        None
    } else {
        Some(Scopes { values: args.scopes })
    };
    let metadata = if args.clear_meta {
        Some(Metadata::default())
    } else if args.meta.is_empty() {
        None
    } else {
        Some(Metadata { entries: metadata_map(args.meta)? })
    };
    let expires_at = if args.no_expiry {
        Some(0)
    } else if let Some(ttl) = args.ttl {
        let ttl = i64::try_from(ttl).map_err(|_| CliError::Usage("--ttl is too long".into()))?;
        Some(now.saturating_add(ttl))
    } else {
        args.expires_at
    };
    let rate_limit =
        if args.clear_rate_limit { Some(RateLimitPolicy::default()) } else { args.rate.policy()? };
    let request = UpdateKeyRequest { id: args.id, name: args.name, scopes, metadata, rate_limit, expires_at };
    if request.name.is_none()
        && request.scopes.is_none()
        && request.metadata.is_none()
        && request.rate_limit.is_none()
        && request.expires_at.is_none()
    {
        return Err(CliError::Usage(
            "nothing to update: give at least one of --name, --scope, --clear-scopes, --meta, \
             --clear-meta, --expires-at, --ttl, --no-expiry, --rate, --tier, --clear-rate-limit"
                .into(),
        ));
    }
    Ok(request)
}

/// The signing algorithm and public key a `keys create` asks for.
pub fn signing_fields(args: &KeysCreate) -> Result<(i32, Vec<u8>), CliError> {
    use tollgate_proto::v1::SigningAlgorithm;
    match (args.signing, &args.public_key) {
        (None, _) => Ok((SigningAlgorithm::Unspecified as i32, Vec::new())),
        (Some(SigningKind::Hmac), None) => Ok((SigningAlgorithm::HmacSha256 as i32, Vec::new())),
        (Some(SigningKind::Hmac), Some(_)) => Err(CliError::Usage(
            "--public-key is for --signing ed25519; HMAC secrets are generated".to_owned(),
        )),
        (Some(SigningKind::Ed25519), None) => {
            Err(CliError::Usage("--signing ed25519 needs --public-key FILE".to_owned()))
        }
        (Some(SigningKind::Ed25519), Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
            let key = tollgate_signing::ed25519_public_key(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            Ok((SigningAlgorithm::Ed25519 as i32, key.to_vec()))
        }
    }
}

fn write_key(o: &mut Output<'_>, key: &tollgate_proto::v1::Key) -> Result<(), CliError> {
    if o.json {
        output::write_json(o.out, &KeyView::from(key))?;
    } else {
        output::write_key_detail(o.out, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied()))
    }

    fn update_args(args: &[&str]) -> KeysUpdate {
        let mut full = vec!["keys", "update", "key_abc"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Keys(KeysCommand::Update(u)) => u,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn update_sends_only_what_was_given() {
        let req = update_request(update_args(&["--name", "ci"]), 1_000).unwrap();
        assert_eq!(req.name.as_deref(), Some("ci"));
        assert!(req.scopes.is_none() && req.metadata.is_none() && req.rate_limit.is_none());
        assert_eq!(req.expires_at, None);
    }

    #[test]
    fn update_clears_and_sets_expiry() {
        let req = update_request(update_args(&["--clear-scopes", "--no-expiry"]), 1_000).unwrap();
        assert_eq!(req.scopes.map(|s| s.values.len()), Some(0));
        assert_eq!(req.expires_at, Some(0));
        let req = update_request(update_args(&["--ttl", "1h"]), 1_000).unwrap();
        assert_eq!(req.expires_at, Some(4_600));
        let req = update_request(update_args(&["--expires-at", "2030-01-01T00:00:00Z"]), 1_000).unwrap();
        assert_eq!(req.expires_at, Some(1_893_456_000));
    }

    #[test]
    fn update_with_nothing_is_a_usage_error() {
        let err = update_request(update_args(&[]), 0).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
