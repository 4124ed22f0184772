//! The dashboard with many keys: keys created through `CreateKey`, usage reported through
//! `ReportUsage` with the data-plane token, an admin login over HTTP, then timed GETs of the keys
//! page (the first page and one deep into the list, reached with a page token) and the overview.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tollgate_bench::keyd_report::{DashboardRun, PageTiming, thousands};
use tollgate_bench::{Error, Result};
use tollgate_e2e::{ADMIN_TOKEN, HttpClient, Keyd};
use tollgate_proto::v1::{ListKeysRequest, ReportUsageRequest, UsageCount};

use super::create_keys;

/// Rows on a page of the dashboard's keys list.
const PAGE_ROWS: usize = 50;
/// Counts in one `ReportUsage` call (the service takes up to 10,000).
const COUNTS_PER_REPORT: usize = 5000;

/// What to set up and how often to ask.
pub(crate) struct Plan {
    pub(crate) keys: usize,
    pub(crate) consumers: usize,
    /// Every `usage_every`-th key gets usage.
    pub(crate) usage_every: usize,
    pub(crate) requests: usize,
}

/// Fills `keyd` (empty) with `plan.keys` keys and their usage, then times its pages.
pub(crate) async fn measure(keyd: &Keyd, store: &str, plan: &Plan) -> Result<DashboardRun> {
    let admin = keyd.admin_client().await;
    let started = Instant::now();
    let keys = create_keys(&admin, plan.keys, plan.consumers, 16).await?;
    let create_seconds = started.elapsed().as_secs_f64();
    eprintln!("  {store}: {} keys created in {create_seconds:.1} s", thousands(keys.len()));

    // Usage over the last 24 hours for every `usage_every`-th key: allowed requests in each hour,
    // refused ones in four of them, as a gateway reports them.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let minute = now - now % 60;
    let mut counts = Vec::new();
    let with_usage: Vec<&(String, String)> = keys.iter().step_by(plan.usage_every.max(1)).collect();
    for (i, (key_id, _)) in with_usage.iter().enumerate() {
        for hour in 0..24i64 {
            let at = minute - hour * 3600;
            let count = |outcome: &str, count| UsageCount {
                key_id: key_id.clone(),
                minute: at,
                outcome: outcome.to_owned(),
                count,
                ..Default::default()
            };
            counts.push(count("allowed", 1 + ((i as u64 + hour as u64) % 50)));
            if hour % 6 == 0 {
                counts.push(count("insufficient_scope", 1 + (i as u64 % 3)));
            }
        }
    }
    let usage_counts = counts.len();
    let mut dataplane = keyd.dataplane_client().await;
    for (batch, chunk) in counts.chunks(COUNTS_PER_REPORT).enumerate() {
        let report = ReportUsageRequest {
            gateway: "bench-gateway".to_owned(),
            batch: batch as u64 + 1,
            feed_seq: 0,
            counts: chunk.to_vec(),
        };
        let answer = dataplane
            .report_usage(report)
            .await
            .map_err(|status| Error(format!("ReportUsage: {status}")))?
            .into_inner();
        if answer.duplicate || answer.skipped > 0 {
            return Err(Error(format!(
                "ReportUsage batch {}: duplicate {}, {} counts skipped",
                batch + 1,
                answer.duplicate,
                answer.skipped
            )));
        }
    }

    // The page token after all keys but the last page's, as ListKeys and the dashboard both make
    // it (the position of the last key before the page).
    let deep_after = plan.keys.saturating_sub(PAGE_ROWS);
    let mut token = String::new();
    let mut listed = 0;
    while listed < deep_after {
        let page_size = (deep_after - listed).min(500);
        let page = admin
            .clone()
            .list_keys(ListKeysRequest {
                page_size: page_size as u32,
                page_token: token,
                ..Default::default()
            })
            .await
            .map_err(|status| Error(format!("ListKeys: {status}")))?
            .into_inner();
        listed += page.keys.len();
        token = page.next_page_token;
        if page.keys.is_empty() || token.is_empty() {
            return Err(Error(format!("ListKeys ended after {listed} keys, not {}", plan.keys)));
        }
    }

    let http = HttpClient::new();
    let base = format!("http://{}", keyd.http_addr());
    let login = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .try_send()
        .await
        .map_err(|e| Error(format!("dashboard login: {e}")))?;
    let cookie = login
        .header("set-cookie")
        .filter(|_| login.status == 303)
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_owned())
        .ok_or_else(|| Error(format!("dashboard login answers {}: {}", login.status, login.text())))?;

    let deep_page = deep_after / PAGE_ROWS + 1;
    let pages = [
        ("keys, first page".to_owned(), "/keys".to_owned(), Some(PAGE_ROWS)),
        (
            format!("keys, page {deep_page} (after {} keys, by page token)", thousands(deep_after)),
            format!("/keys?after={token}"),
            Some(plan.keys - deep_after),
        ),
        ("overview".to_owned(), "/".to_owned(), None),
    ];
    let mut timings = Vec::new();
    for (page, path, rows) in pages {
        let get = || async {
            let started = Instant::now();
            let res = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .try_send()
                .await
                .map_err(|e| Error(format!("GET {path}: {e}")))?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if res.status != 200 {
                return Err(Error(format!("GET {path} answers {}: {}", res.status, res.text())));
            }
            Ok((ms, res.text()))
        };
        // One untimed GET, which also checks the page shows what it should.
        let (_, html) = get().await?;
        let shown = html.matches("<tr data-key=").count();
        if let Some(rows) = rows
            && shown != rows
        {
            return Err(Error(format!("GET {path} shows {shown} keys, not {rows}")));
        }
        let mut ms = Vec::new();
        for _ in 0..plan.requests {
            ms.push(get().await?.0);
        }
        let timing = PageTiming { page, path, ms, rows: rows.map(|_| shown) };
        eprintln!(
            "  {store}: {:<44} median {:>7.2} ms  max {:>7.2} ms",
            timing.page,
            timing.median_ms().unwrap_or(f64::NAN),
            timing.max_ms().unwrap_or(f64::NAN)
        );
        timings.push(timing);
    }
    Ok(DashboardRun {
        store: store.to_owned(),
        keys: keys.len(),
        consumers: plan.consumers,
        keys_with_usage: with_usage.len(),
        usage_counts,
        create_seconds,
        pages: timings,
    })
}
