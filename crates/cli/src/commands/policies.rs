//! `tollgate policies …`: set, list and remove rotation policies.

use serde::Serialize;
use tollgate_proto::v1::{
    DeleteRotationPolicyRequest, ListRotationPoliciesRequest, RotationMode, RotationPolicy,
    RotationPolicyRecord, SetRotationPolicyRequest,
};

use crate::Output;
use crate::args::{PoliciesCommand, PolicyModeArg, PolicyTargetArgs};
use crate::client::{CliError, Client};
use crate::output;
use crate::parse::rfc3339;

/// A duration in seconds, shown in the largest whole unit (`30d`, `12h`, `90m`, `45s`).
fn span(secs: i64) -> String {
    match secs {
        0 => "0".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn mode_name(mode: i32) -> &'static str {
    match RotationMode::try_from(mode) {
        Ok(RotationMode::Auto) => "auto",
        Ok(RotationMode::Notify) => "notify",
        _ => "unspecified",
    }
}

/// JSON view of a policy.
#[derive(Debug, Serialize)]
struct PolicyView<'a> {
    consumer_id: &'a str,
    key_id: &'a str,
    max_age: String,
    notify_before: Vec<String>,
    grace: String,
    mode: &'static str,
    revoke_unused_previous_after: String,
    updated_at: Option<String>,
}

impl<'a> From<&'a RotationPolicyRecord> for PolicyView<'a> {
    fn from(r: &'a RotationPolicyRecord) -> Self {
        let p = r.policy.clone().unwrap_or_default();
        Self {
            consumer_id: &r.consumer_id,
            key_id: &r.key_id,
            max_age: span(p.max_age_seconds),
            notify_before: p.notify_before_seconds.iter().map(|s| span(*s)).collect(),
            grace: span(p.grace_seconds),
            mode: mode_name(p.mode),
            revoke_unused_previous_after: span(p.revoke_unused_previous_after_seconds),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

fn target(t: PolicyTargetArgs) -> (String, String) {
    (t.consumer.unwrap_or_default(), t.key.unwrap_or_default())
}

fn seconds(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn write_table(o: &mut Output<'_>, records: &[RotationPolicyRecord]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let v = PolicyView::from(r);
            vec![
                v.consumer_id.to_owned(),
                if v.key_id.is_empty() { "(every key)".to_owned() } else { v.key_id.to_owned() },
                v.mode.to_owned(),
                v.max_age,
                if v.notify_before.is_empty() { "-".to_owned() } else { v.notify_before.join(",") },
                v.grace,
                v.revoke_unused_previous_after,
            ]
        })
        .collect();
    output::write_table(
        o.out,
        &["CONSUMER", "KEY", "MODE", "MAX_AGE", "NOTIFY_BEFORE", "GRACE", "UNUSED_PREVIOUS_AFTER"],
        &rows,
    )?;
    Ok(())
}

/// Runs one `policies` command.
pub async fn run(cmd: PoliciesCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        PoliciesCommand::Set {
            target: t,
            max_age,
            notify_before,
            grace,
            mode,
            revoke_unused_previous_after,
        } => {
            let (consumer, key_id) = target(t);
            let policy = RotationPolicy {
                max_age_seconds: seconds(max_age),
                notify_before_seconds: notify_before.into_iter().map(seconds).collect(),
                grace_seconds: seconds(grace),
                mode: match mode {
                    PolicyModeArg::Notify => RotationMode::Notify,
                    PolicyModeArg::Auto => RotationMode::Auto,
                } as i32,
                revoke_unused_previous_after_seconds: seconds(revoke_unused_previous_after),
            };
            let record = client
                .set_rotation_policy(SetRotationPolicyRequest { consumer, key_id, policy: Some(policy) })
                .await?
                .into_inner();
            if o.json {
                output::write_json(o.out, &PolicyView::from(&record))?;
            } else {
                write_table(o, std::slice::from_ref(&record))?;
            }
        }
        PoliciesCommand::List { consumer } => {
            let request = ListRotationPoliciesRequest { consumer: consumer.unwrap_or_default() };
            let policies = client.list_rotation_policies(request).await?.into_inner().policies;
            if o.json {
                let views: Vec<PolicyView<'_>> = policies.iter().map(PolicyView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                write_table(o, &policies)?;
            }
        }
        PoliciesCommand::Rm { target: t } => {
            let (consumer, key_id) = target(t);
            client
                .delete_rotation_policy(DeleteRotationPolicyRequest {
                    consumer: consumer.clone(),
                    key_id: key_id.clone(),
                })
                .await?;
            if o.json {
                output::write_json(
                    o.out,
                    &serde_json::json!({ "consumer": consumer, "key_id": key_id, "deleted": true }),
                )?;
            } else {
                let what =
                    if key_id.is_empty() { format!("consumer {consumer}") } else { format!("key {key_id}") };
                writeln!(o.out, "Removed the rotation policy of {what}.")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn spans_use_the_largest_whole_unit() {
        assert_eq!(span(90 * 86_400), "90d");
        assert_eq!(span(36 * 3_600), "36h");
        assert_eq!(span(90), "90s");
        assert_eq!(span(0), "0");
    }
}
