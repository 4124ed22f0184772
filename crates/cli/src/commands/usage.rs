//! `tollgate usage`: requests per key over a window, and the gateways that report them.

use serde::Serialize;
use tollgate_proto::v1::{GetUsageRequest, GetUsageResponse};

use crate::Output;
use crate::args::UsageArgs;
use crate::client::{CliError, Client};
use crate::output;
use crate::parse::now_secs;

#[derive(Serialize)]
struct KeyUsageView<'a> {
    key_id: &'a str,
    consumer_id: &'a str,
    allowed: u64,
    denied: u64,
    outcomes: std::collections::BTreeMap<&'a str, u64>,
    last_used_at: i64,
}

#[derive(Serialize)]
struct GatewayView<'a> {
    gateway: &'a str,
    last_report_at: i64,
    feed_seq: u64,
    behind: u64,
}

#[derive(Serialize)]
struct UsageView<'a> {
    since: i64,
    keys: Vec<KeyUsageView<'a>>,
    gateways: Vec<GatewayView<'a>>,
}

/// Runs `usage`.
pub async fn run(args: UsageArgs, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    let since = now_secs().saturating_sub(i64::try_from(args.since).unwrap_or(i64::MAX));
    // Whole minutes: the minute `since` falls in counts.
    let since = since - since.rem_euclid(60);
    let request =
        GetUsageRequest { key_ids: args.keys, consumer: args.consumer.unwrap_or_default(), since, until: 0 };
    let response = client.get_usage(request).await?.into_inner();
    write(o, since, &response)
}

fn write(o: &mut Output<'_>, since: i64, response: &GetUsageResponse) -> Result<(), CliError> {
    let view = UsageView {
        since,
        keys: response
            .keys
            .iter()
            .map(|k| KeyUsageView {
                key_id: &k.key_id,
                consumer_id: &k.consumer_id,
                allowed: k.allowed,
                denied: k.denied,
                outcomes: k.outcomes.iter().map(|(o, n)| (o.as_str(), *n)).collect(),
                last_used_at: k.last_used_at,
            })
            .collect(),
        gateways: response
            .gateways
            .iter()
            .map(|g| GatewayView {
                gateway: &g.gateway,
                last_report_at: g.last_report_at,
                feed_seq: g.feed_seq,
                behind: response.head_seq.saturating_sub(g.feed_seq),
            })
            .collect(),
    };
    if o.json {
        output::write_json(o.out, &view)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = view
        .keys
        .iter()
        .map(|k| {
            let refused: Vec<String> = k
                .outcomes
                .iter()
                .filter(|(outcome, _)| **outcome != "allowed")
                .map(|(outcome, n)| format!("{outcome}={n}"))
                .collect();
            vec![
                k.key_id.to_owned(),
                k.consumer_id.to_owned(),
                k.allowed.to_string(),
                k.denied.to_string(),
                refused.join(" "),
                output::time_cell(k.last_used_at),
            ]
        })
        .collect();
    output::write_table(
        o.out,
        &["KEY", "CONSUMER", "ALLOWED", "DENIED", "REFUSED BY REASON", "LAST USED"],
        &rows,
    )?;
    if !view.gateways.is_empty() {
        writeln!(o.out)?;
        let rows: Vec<Vec<String>> = view
            .gateways
            .iter()
            .map(|g| {
                vec![
                    g.gateway.to_owned(),
                    output::time_cell(g.last_report_at),
                    g.feed_seq.to_string(),
                    g.behind.to_string(),
                ]
            })
            .collect();
        output::write_table(o.out, &["GATEWAY", "LAST REPORT", "FEED SEQ", "BEHIND"], &rows)?;
    }
    Ok(())
}
