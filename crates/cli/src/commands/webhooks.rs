//! `tollgate webhooks …`: create, list, change (enable, disable) and delete endpoints; read the
//! delivery log; rotate an endpoint's secret; replay stored events.

use serde::Serialize;
use tollgate_proto::v1::{
    CreateWebhookRequest, DeleteWebhookRequest, ListWebhookDeliveriesRequest, ListWebhooksRequest,
    ReplayWebhooksRequest, RotateWebhookSecretRequest, UpdateWebhookRequest, Webhook, WebhookDelivery,
};

use crate::Output;
use crate::args::WebhooksCommand;
use crate::client::{CliError, Client};
use crate::output;
use crate::parse::{now_secs, rfc3339};

/// JSON view of an endpoint.
#[derive(Debug, Serialize)]
struct WebhookView<'a> {
    id: &'a str,
    url: &'a str,
    events: &'a [String],
    enabled: bool,
    disabled_reason: &'a str,
    created_at: Option<String>,
    previous_secret_expires_at: Option<String>,
    failing_since: Option<String>,
}

impl<'a> From<&'a Webhook> for WebhookView<'a> {
    fn from(w: &'a Webhook) -> Self {
        Self {
            id: &w.id,
            url: &w.url,
            events: &w.events,
            enabled: w.enabled,
            disabled_reason: &w.disabled_reason,
            created_at: rfc3339(w.created_at),
            previous_secret_expires_at: rfc3339(w.previous_secret_expires_at),
            failing_since: rfc3339(w.failing_since),
        }
    }
}

/// JSON view of an endpoint with the secret a call returned (once).
#[derive(Debug, Serialize)]
struct WithSecret<'a> {
    #[serde(flatten)]
    webhook: WebhookView<'a>,
    secret: &'a str,
}

/// Whether an endpoint is enabled, and why not.
fn enabled_text(hook: &Webhook) -> String {
    if hook.enabled { "yes".to_owned() } else { format!("no ({})", hook.disabled_reason) }
}

/// JSON view of one delivery attempt.
#[derive(Debug, Serialize)]
struct DeliveryView<'a> {
    message_id: &'a str,
    webhook_id: &'a str,
    event_type: &'a str,
    attempt: u32,
    at: Option<String>,
    status: u32,
    latency_ms: u64,
    error: &'a str,
    outcome: &'a str,
    next_attempt_at: Option<String>,
}

impl<'a> From<&'a WebhookDelivery> for DeliveryView<'a> {
    fn from(d: &'a WebhookDelivery) -> Self {
        Self {
            message_id: &d.message_id,
            webhook_id: &d.webhook_id,
            event_type: &d.event_type,
            attempt: d.attempt,
            at: rfc3339(d.at),
            status: d.status,
            latency_ms: d.latency_ms,
            error: &d.error,
            outcome: &d.outcome,
            next_attempt_at: rfc3339(d.next_attempt_at),
        }
    }
}

/// Runs one `webhooks` command.
pub async fn run(cmd: WebhooksCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        WebhooksCommand::Create { url, events } => {
            let response = client.create_webhook(CreateWebhookRequest { url, events }).await?.into_inner();
            let hook = response.webhook.unwrap_or_default();
            if o.json {
                output::write_json(
                    o.out,
                    &WithSecret { webhook: WebhookView::from(&hook), secret: &response.secret },
                )?;
            } else {
                writeln!(o.out, "id:      {}", hook.id)?;
                writeln!(o.out, "url:     {}", hook.url)?;
                writeln!(o.out, "events:  {}", hook.events.join(", "))?;
                writeln!(o.out, "secret:  {}", response.secret)?;
                writeln!(
                    o.err,
                    "The secret is shown once: store it where the receiver verifies signatures."
                )?;
            }
        }
        WebhooksCommand::List => {
            let hooks = client.list_webhooks(ListWebhooksRequest {}).await?.into_inner().webhooks;
            if o.json {
                let views: Vec<WebhookView<'_>> = hooks.iter().map(WebhookView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                writeln!(o.out, "ID\tENABLED\tEVENTS\tURL")?;
                for h in &hooks {
                    writeln!(o.out, "{}\t{}\t{}\t{}", h.id, enabled_text(h), h.events.join(","), h.url)?;
                }
            }
        }
        WebhooksCommand::RotateSecret { id, grace } => {
            let request = RotateWebhookSecretRequest { id, grace_period_seconds: grace };
            let response = client.rotate_webhook_secret(request).await?.into_inner();
            let hook = response.webhook.unwrap_or_default();
            if o.json {
                output::write_json(
                    o.out,
                    &WithSecret { webhook: WebhookView::from(&hook), secret: &response.secret },
                )?;
            } else {
                writeln!(o.out, "id:      {}", hook.id)?;
                writeln!(o.out, "url:     {}", hook.url)?;
                writeln!(o.out, "secret:  {}", response.secret)?;
                match rfc3339(hook.previous_secret_expires_at) {
                    Some(until) => writeln!(o.out, "previous secret signs too until {until}")?,
                    None => writeln!(o.out, "the previous secret no longer signs")?,
                }
                writeln!(
                    o.err,
                    "The secret is shown once: store it where the receiver verifies signatures."
                )?;
            }
        }
        WebhooksCommand::Replay { since, webhook } => {
            let since = since.at(now_secs());
            let request = ReplayWebhooksRequest { since, webhook_id: webhook.unwrap_or_default() };
            let requeued = client.replay_webhooks(request).await?.into_inner().requeued;
            if o.json {
                output::write_json(
                    o.out,
                    &serde_json::json!({ "since": rfc3339(since), "requeued": requeued }),
                )?;
            } else {
                writeln!(
                    o.out,
                    "Queued {requeued} message(s) created since {} again.",
                    rfc3339(since).unwrap_or_else(|| since.to_string())
                )?;
            }
        }
        WebhooksCommand::Update { id, url, events, enable, disable } => {
            let enabled = if enable { Some(true) } else { disable.then_some(false) };
            update(client, o, UpdateWebhookRequest { id, url, events, enabled }).await?;
        }
        WebhooksCommand::Enable { id } => {
            update(client, o, UpdateWebhookRequest { id, enabled: Some(true), ..Default::default() }).await?;
        }
        WebhooksCommand::Disable { id } => {
            update(client, o, UpdateWebhookRequest { id, enabled: Some(false), ..Default::default() })
                .await?;
        }
        WebhooksCommand::Delete { id } => {
            client.delete_webhook(DeleteWebhookRequest { id: id.clone() }).await?;
            if o.json {
                output::write_json(o.out, &serde_json::json!({ "id": id, "deleted": true }))?;
            } else {
                writeln!(o.out, "Deleted webhook {id}.")?;
            }
        }
        WebhooksCommand::Deliveries { webhook, limit } => {
            let request = ListWebhookDeliveriesRequest {
                webhook_id: webhook.unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let deliveries = client.list_webhook_deliveries(request).await?.into_inner().deliveries;
            if o.json {
                let views: Vec<DeliveryView<'_>> = deliveries.iter().map(DeliveryView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                writeln!(o.out, "AT\tWEBHOOK\tEVENT\tMESSAGE\tATTEMPT\tSTATUS\tLATENCY_MS\tOUTCOME\tERROR")?;
                for d in &deliveries {
                    writeln!(
                        o.out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        rfc3339(d.at).unwrap_or_default(),
                        d.webhook_id,
                        d.event_type,
                        d.message_id,
                        d.attempt,
                        d.status,
                        d.latency_ms,
                        d.outcome,
                        d.error
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Sends one change and prints the endpoint as it now is.
async fn update(
    client: &mut Client,
    o: &mut Output<'_>,
    request: UpdateWebhookRequest,
) -> Result<(), CliError> {
    let hook = client.update_webhook(request).await?.into_inner().webhook.unwrap_or_default();
    if o.json {
        output::write_json(o.out, &WebhookView::from(&hook))?;
    } else {
        writeln!(o.out, "id:      {}", hook.id)?;
        writeln!(o.out, "url:     {}", hook.url)?;
        writeln!(o.out, "events:  {}", hook.events.join(", "))?;
        writeln!(o.out, "enabled: {}", enabled_text(&hook))?;
    }
    Ok(())
}
