//! The handlers: one per page or form.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::key_service_server::KeyService;

use super::html::{self, Frame, esc, page, sparkline, time_rel, url};
use super::session;
use super::{Authed, PageError, State, may_change};
use crate::auth;
use crate::model::{AuditEntry, AuditFilter, Key, KeyFilter, KeyStatus, UsagePoint, UsageQuery};
use crate::service::blocking;
use crate::validate;

type Page = Result<Response, PageError>;

/// Rows per page of the keys, consumers and audit lists.
const PAGE_ROWS: usize = 50;
/// The usage window of every page: 24 hours in hourly buckets.
const STEP: i64 = 3_600;
const BUCKETS: usize = 24;
/// Keys shown as expiring soon: within 7 days.
const EXPIRING_WITHIN: i64 = 7 * 86_400;

fn html_page(frame: &Frame<'_>, body: &str) -> Response {
    Html(page(frame, body)).into_response()
}

/// The 24-hour window ending with the current minute: `[since, until)`.
fn window(now: i64) -> (i64, i64) {
    let until = (now.div_euclid(60) + 1) * 60;
    (until - STEP * BUCKETS as i64, until)
}

/// One key's (or every key's) requests in the window: per hour, and per outcome.
#[derive(Default)]
struct Usage {
    hours: [u64; BUCKETS],
    outcomes: BTreeMap<String, u64>,
}

impl Usage {
    fn add(&mut self, point: &UsagePoint, since: i64) {
        let hour = usize::try_from((point.bucket - since) / STEP).unwrap_or(BUCKETS);
        if let Some(slot) = self.hours.get_mut(hour) {
            *slot = slot.saturating_add(point.count);
        }
        let total = self.outcomes.entry(point.outcome.clone()).or_default();
        *total = total.saturating_add(point.count);
    }

    fn allowed(&self) -> u64 {
        self.outcomes.get("allowed").copied().unwrap_or(0)
    }

    fn denied(&self) -> u64 {
        self.outcomes.iter().filter(|(o, _)| o.as_str() != "allowed").map(|(_, c)| *c).sum()
    }

    fn spark(&self, what: &str) -> String {
        sparkline(&self.hours, &format!("{what}: requests per hour over 24 hours"))
    }

    /// Allowed first, then each refusal reason.
    fn outcome_table(&self) -> String {
        if self.outcomes.is_empty() {
            return "<p class=\"empty\">No requests reported in the last 24 hours.</p>".to_owned();
        }
        let mut out = String::from(
            "<table class=\"outcomes\"><thead><tr><th>outcome</th><th class=\"num\">requests</th></tr></thead><tbody>",
        );
        let _ = write!(out, "<tr><td>allowed</td><td class=\"num\">{}</td></tr>", self.allowed());
        for (outcome, count) in self.outcomes.iter().filter(|(o, _)| o.as_str() != "allowed") {
            let _ = write!(out, "<tr><td>denied: {}</td><td class=\"num\">{count}</td></tr>", esc(outcome));
        }
        out.push_str("</tbody></table>");
        out
    }
}

fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Expired => "expired",
    }
}

fn key_link(key_id: &str, label: &str) -> String {
    format!("<a href=\"/keys/{}\">{}</a>", esc(&url(key_id)), label)
}

fn consumer_link(consumer_id: &str) -> String {
    format!("<a href=\"/keys?consumer={}\">{}</a>", esc(&url(consumer_id)), esc(consumer_id))
}

fn audit_table(entries: &[AuditEntry], now: i64) -> String {
    if entries.is_empty() {
        return "<p class=\"empty\">No audit entries.</p>".to_owned();
    }
    let mut out = String::from(
        "<table class=\"audit\"><thead><tr><th>#</th><th>time</th><th>actor</th><th>action</th><th>key</th>\
         <th>consumer</th><th>detail</th></tr></thead><tbody>",
    );
    for e in entries {
        let key = if e.key_id.is_empty() {
            String::new()
        } else {
            key_link(&e.key_id, &esc(&e.key_id).to_string())
        };
        let consumer = if e.consumer_id.is_empty() { String::new() } else { consumer_link(&e.consumer_id) };
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{key}</td><td>{consumer}</td>\
             <td><code>{}</code></td></tr>",
            e.seq,
            esc(&time_rel(e.at, now)),
            esc(&e.actor),
            esc(&e.action),
            esc(&e.detail.to_string()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// A key id from the path: refused (400) when it cannot be one, before any lookup.
fn key_id(id: &str) -> Result<&str, PageError> {
    if id.is_empty() || id.len() > validate::MAX_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PageError::BadRequest("That is not a key id.".to_owned()));
    }
    Ok(id)
}

/// A tonic request carrying the admin role, as the gRPC authentication layer would add it.
fn admin_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(auth::Role::Admin);
    request
}

// ---- login ------------------------------------------------------------------------------------

pub(super) async fn login_form() -> Response {
    let frame = Frame { title: "Log in", role: None, can_change: false, csrf: "" };
    html_page(&frame, &html::login_body(None))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

pub(super) async fn login(Extract(state): Extract<State>, Form(form): Form<LoginForm>) -> Response {
    let Some(role) = state.role_of(&form.token) else {
        tracing::warn!("dashboard: login with a wrong token");
        let frame = Frame { title: "Log in", role: None, can_change: false, csrf: "" };
        let body = html::login_body(Some("That token is not valid."));
        return (StatusCode::UNAUTHORIZED, Html(page(&frame, &body))).into_response();
    };
    let now = state.0.clock.now();
    let value = match state.0.signer.issue(role, now) {
        Ok(value) => value,
        Err(err) => return PageError::from(err).into_response(),
    };
    tracing::info!(role = role.as_str(), "dashboard: logged in");
    let mut response = Redirect::to("/").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(&value, false)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    Extract(state): Extract<State>,
    authed: Authed,
    Form(form): Form<CsrfForm>,
) -> Page {
    // Viewers may log out too; the token must still be theirs.
    if !state.0.signer.check_csrf(&authed.session, &form.csrf) {
        return Err(PageError::Forbidden("The form's CSRF token is missing or wrong."));
    }
    state.end(&authed.session);
    let mut response = Redirect::to("/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie(false)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

// ---- overview ---------------------------------------------------------------------------------

pub(super) async fn overview(Extract(state): Extract<State>, authed: Authed) -> Page {
    let now = state.0.clock.now();
    let (since, until) = window(now);
    let (counts, series, (top, gateways, head), expiring, recent) = blocking(&state.0.store, move |s| {
        Ok((
            s.count_keys(now)?,
            s.usage_series(None, since, until, STEP)?,
            s.usage(&UsageQuery { key_ids: Vec::new(), consumer_id: None, since, until })?,
            s.list_expiring_keys(now, now + EXPIRING_WITHIN, 20)?,
            s.list_audit_recent(&AuditFilter::default(), None, 10)?,
        ))
    })
    .await?;
    let mut usage = Usage::default();
    for point in &series {
        usage.add(point, since);
    }
    let mut body = String::new();
    let _ = write!(
        body,
        "<section class=\"cards\"><div class=\"card\"><h2>Keys</h2><p><span class=\"big\">{}</span> active · {} \
         revoked · {} expired</p></div><div class=\"card\"><h2>Requests, 24 h</h2><p><span class=\"big\" \
         id=\"allowed-24h\">{}</span> allowed · <span id=\"denied-24h\">{}</span> denied</p>{}</div></section>",
        counts.active,
        counts.revoked,
        counts.expired,
        usage.allowed(),
        usage.denied(),
        usage.spark("every key"),
    );
    body.push_str("<section><h2>Requests and denials by reason, 24 h</h2>");
    body.push_str(&usage.outcome_table());
    body.push_str("</section>");

    // Top keys by requests in the window.
    let mut top: Vec<(u64, u64, String, String)> = top
        .into_iter()
        .map(|k| {
            let total: u64 = k.outcomes.values().sum();
            let allowed = k.outcomes.get("allowed").copied().unwrap_or(0);
            (total, allowed, k.key_id, k.consumer_id)
        })
        .collect();
    top.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    top.truncate(10);
    body.push_str("<section><h2>Top keys, 24 h</h2>");
    if top.is_empty() {
        body.push_str("<p class=\"empty\">No requests reported in the last 24 hours.</p>");
    } else {
        body.push_str(
            "<table id=\"top-keys\"><thead><tr><th>key</th><th>consumer</th><th class=\"num\">requests</th>\
             <th class=\"num\">allowed</th><th class=\"num\">denied</th></tr></thead><tbody>",
        );
        for (total, allowed, key_id, consumer_id) in &top {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{total}</td><td class=\"num\">{allowed}</td>\
                 <td class=\"num\">{}</td></tr>",
                key_link(key_id, &esc(key_id).to_string()),
                consumer_link(consumer_id),
                total - allowed
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Keys expiring within 7 days</h2>");
    if expiring.is_empty() {
        body.push_str("<p class=\"empty\">None.</p>");
    } else {
        body.push_str(
            "<table id=\"expiring\"><thead><tr><th>key</th><th>name</th><th>consumer</th><th>expires</th></tr></thead><tbody>",
        );
        for k in &expiring {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                key_link(&k.id, &format!("<code>{}…</code>", esc(&k.display_prefix))),
                esc(&k.name),
                consumer_link(&k.consumer_id),
                esc(&time_rel(k.expires_at, now))
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Gateways</h2>");
    if gateways.is_empty() {
        body.push_str("<p class=\"empty\">No gateway has reported usage yet.</p>");
    } else {
        let _ = write!(
            body,
            "<p>Change feed head: {head}.</p><table id=\"gateways\"><thead><tr><th>gateway</th><th>last report</th>\
             <th class=\"num\">feed position</th><th class=\"num\">behind the feed</th></tr></thead><tbody>"
        );
        for g in &gateways {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{} changes</td></tr>",
                esc(&g.gateway),
                esc(&time_rel(g.last_report_at, now)),
                g.feed_seq,
                head.saturating_sub(g.feed_seq)
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Recent changes</h2>");
    body.push_str(&audit_table(&recent, now));
    body.push_str("<p><a href=\"/audit\">The whole audit log</a></p></section>");
    Ok(html_page(&authed.frame("Overview"), &body))
}

// ---- consumers --------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    after: String,
}

pub(super) async fn consumers(
    Extract(state): Extract<State>,
    authed: Authed,
    Query(query): Query<PageQuery>,
) -> Page {
    let after = validate::decode_page_token(&query.after).map_err(|_| bad("That page link is not valid."))?;
    let mut rows = blocking(&state.0.store, move |s| s.list_consumers(after, PAGE_ROWS + 1)).await?;
    let next = next_token(&mut rows, |c| c.position);
    let now = state.0.clock.now();
    let mut body = String::new();
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">No consumers.</p>");
    } else {
        body.push_str(
            "<table id=\"consumers\"><thead><tr><th>id</th><th>name</th><th>created</th><th>metadata</th>\
             <th></th></tr></thead><tbody>",
        );
        for c in &rows {
            let metadata: Vec<String> = c.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td class=\"consumer-name\">{}</td><td>{}</td><td>{}</td>\
                 <td><a href=\"/keys?consumer={}\">keys</a></td></tr>",
                esc(&c.id),
                esc(&c.name),
                esc(&time_rel(c.created_at, now)),
                esc(&metadata.join(", ")),
                esc(&url(&c.id))
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            "<p><a rel=\"next\" href=\"/consumers?after={}\">Next page</a></p>",
            esc(&url(&next))
        );
    }
    Ok(html_page(&authed.frame("Consumers"), &body))
}

fn bad(message: &str) -> PageError {
    PageError::BadRequest(message.to_owned())
}

/// Keeps the first [`PAGE_ROWS`] of `rows` (fetched one more than that) and returns the token of
/// the next page when there is one.
fn next_token<T>(rows: &mut Vec<T>, position: impl Fn(&T) -> i64) -> Option<String> {
    if rows.len() > PAGE_ROWS {
        rows.truncate(PAGE_ROWS);
        rows.last().map(|r| validate::encode_page_token(position(r)))
    } else {
        None
    }
}

// ---- keys -------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct KeysQuery {
    #[serde(default)]
    consumer: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    after: String,
}

pub(super) async fn keys(
    Extract(state): Extract<State>,
    authed: Authed,
    Query(query): Query<KeysQuery>,
) -> Page {
    let status = match query.status.as_str() {
        "" | "all" => None,
        "active" => Some(KeyStatus::Active),
        "revoked" => Some(KeyStatus::Revoked),
        "expired" => Some(KeyStatus::Expired),
        _ => return Err(bad("The status filter must be active, revoked or expired.")),
    };
    let after = validate::decode_page_token(&query.after).map_err(|_| bad("That page link is not valid."))?;
    if query.consumer.chars().count() > validate::MAX_NAME_LEN {
        return Err(bad("That consumer is not valid."));
    }
    let now = state.0.clock.now();
    let (since, until) = window(now);
    let consumer = query.consumer.trim().to_owned();
    // One page of keys and one usage query for all of them.
    let (rows, series) = blocking(&state.0.store, move |s| {
        let consumer_id = if consumer.is_empty() {
            None
        } else {
            match s.get_consumer(&consumer) {
                Ok(c) => Some(c.id),
                Err(crate::Error::NotFound { .. }) => Some(consumer),
                Err(e) => return Err(e),
            }
        };
        let rows = s.list_keys(&KeyFilter { consumer_id, status, now }, after, PAGE_ROWS + 1)?;
        let ids: Vec<String> = rows.iter().take(PAGE_ROWS).map(|k| k.id.clone()).collect();
        let series =
            if ids.is_empty() { Vec::new() } else { s.usage_series(Some(&ids), since, until, STEP)? };
        Ok((rows, series))
    })
    .await?;
    let mut rows = rows;
    let next = next_token(&mut rows, |k| k.position);
    let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
    for point in &series {
        usage.entry(point.key_id.as_str()).or_default().add(point, since);
    }
    let mut body = String::new();
    let selected = |s: &str| if query.status == s { " selected" } else { "" };
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/keys\" class=\"filters\"><label>consumer <input name=\"consumer\" value=\"{}\">\
         </label><label>status <select name=\"status\"><option value=\"\">all</option>\
         <option value=\"active\"{}>active</option><option value=\"revoked\"{}>revoked</option>\
         <option value=\"expired\"{}>expired</option></select></label><button type=\"submit\">Filter</button></form>",
        esc(&query.consumer),
        selected("active"),
        selected("revoked"),
        selected("expired")
    );
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">No keys.</p>");
    } else {
        body.push_str(
            "<table id=\"keys\"><thead><tr><th>prefix</th><th>name</th><th>consumer</th><th>scopes</th><th>status</th>\
             <th>expires</th><th>last used</th><th class=\"num\">allowed 24 h</th><th class=\"num\">denied 24 h</th>\
             <th>24 h</th></tr></thead><tbody>",
        );
        let none = Usage::default();
        for k in &rows {
            let u = usage.get(k.id.as_str()).unwrap_or(&none);
            let status = status_name(k.status(now));
            let _ = write!(
                body,
                "<tr data-key=\"{}\"><td>{}</td><td class=\"key-name\">{}</td><td>{}</td><td>{}</td>\
                 <td><span class=\"status {status}\">{status}</span></td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&k.id),
                key_link(&k.id, &format!("<code>{}…</code>", esc(&k.display_prefix))),
                esc(&k.name),
                consumer_link(&k.consumer_id),
                esc(&k.scopes.join(" ")),
                esc(&time_rel(k.expires_at, now)),
                esc(&time_rel(k.last_used_at, now)),
                u.allowed(),
                u.denied(),
                u.spark(&k.display_prefix)
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            "<p><a rel=\"next\" href=\"/keys?consumer={}&amp;status={}&amp;after={}\">Next page</a></p>",
            esc(&url(&query.consumer)),
            esc(&url(&query.status)),
            esc(&url(&next))
        );
    }
    Ok(html_page(&authed.frame("Keys"), &body))
}

pub(super) async fn key_detail(
    Extract(state): Extract<State>,
    authed: Authed,
    Path(id): Path<String>,
) -> Page {
    let id = key_id(&id)?.to_owned();
    let now = state.0.clock.now();
    let (since, until) = window(now);
    let (key, series, trail, policy) = blocking(&state.0.store, move |s| {
        let key = s.get_key(&id)?;
        let ids = [id.clone()];
        let series = s.usage_series(Some(&ids), since, until, STEP)?;
        let policy = s.effective_policy(&id)?;
        let filter = AuditFilter { key_id: Some(id), ..Default::default() };
        Ok((key, series, s.list_audit_recent(&filter, None, PAGE_ROWS)?, policy))
    })
    .await?;
    let mut usage = Usage::default();
    for point in &series {
        usage.add(point, since);
    }
    let policy = policy_line(&key, policy.as_ref(), now);
    Ok(html_page(&authed.frame("Key"), &key_body(&key, &usage, &trail, &policy, &authed, now)))
}

/// The key's rotation policy and what it does next, as a paragraph.
fn policy_line(k: &Key, policy: Option<&crate::lifecycle::RotationPolicy>, now: i64) -> String {
    use crate::lifecycle::{PolicyMode, birth, stage_name};
    let Some(p) = policy else {
        return "<p id=\"policy\">No rotation policy.</p>".to_owned();
    };
    let deadline = birth(k).saturating_add(p.max_age);
    let action = match p.mode {
        PolicyMode::Auto => "rotated automatically",
        PolicyMode::Notify => "expires unless rotated",
    };
    let notices: Vec<String> = p.notify_before.iter().map(|l| stage_name(*l)).collect();
    format!(
        "<p id=\"policy\">Rotation policy: {action} {} (max age {}; notices {}; grace {}).</p>",
        esc(&time_rel(deadline, now)),
        esc(&stage_name(p.max_age)),
        esc(&if notices.is_empty() { "none".to_owned() } else { notices.join(", ") }),
        esc(&stage_name(p.grace)),
    )
}

/// The key page; `policy` is [`policy_line`]'s paragraph.
fn key_body(k: &Key, usage: &Usage, trail: &[AuditEntry], policy: &str, authed: &Authed, now: i64) -> String {
    let status = status_name(k.status(now));
    let mut body = String::new();
    let _ = write!(
        body,
        "<dl class=\"facts\"><dt>id</dt><dd><code id=\"key-id\">{}</code></dd><dt>prefix</dt><dd><code>{}…</code></dd>\
         <dt>name</dt><dd class=\"key-name\">{}</dd><dt>consumer</dt><dd>{}</dd><dt>scopes</dt><dd>{}</dd>\
         <dt>status</dt><dd><span class=\"status {status}\" id=\"key-status\">{status}</span></dd>\
         <dt>created</dt><dd>{}</dd><dt>expires</dt><dd>{}</dd><dt>last used</dt><dd>{}</dd>",
        esc(&k.id),
        esc(&k.display_prefix),
        esc(&k.name),
        consumer_link(&k.consumer_id),
        esc(&k.scopes.join(" ")),
        esc(&time_rel(k.created_at, now)),
        esc(&time_rel(k.expires_at, now)),
        esc(&time_rel(k.last_used_at, now)),
    );
    if k.revoked_at != 0 {
        let _ = write!(
            body,
            "<dt>revoked</dt><dd>{}</dd><dt>reason</dt><dd>{}</dd>",
            esc(&time_rel(k.revoked_at, now)),
            esc(&k.revoke_reason)
        );
    }
    if let Some(tier) = &k.rate_limit {
        let _ = write!(body, "<dt>rate-limit tier</dt><dd>{}</dd>", esc(&tier.tier));
    }
    if let Some(signing) = k.signing {
        let _ = write!(body, "<dt>signing</dt><dd>{}</dd>", esc(signing.as_str()));
    }
    body.push_str("</dl><section><h2>Rotation</h2>");
    body.push_str(policy);
    if k.rotated_at == 0 {
        body.push_str("<p id=\"rotation\">Never rotated.</p>");
    } else {
        let grace = if k.previous_expires_at > now {
            format!(
                "the previous secret <code>{}…</code> keeps working until {}",
                esc(&k.previous_display_prefix),
                esc(&time_rel(k.previous_expires_at, now))
            )
        } else {
            format!("the previous secret <code>{}…</code> no longer works", esc(&k.previous_display_prefix))
        };
        let _ =
            write!(body, "<p id=\"rotation\">Rotated {}; {grace}.</p>", esc(&time_rel(k.rotated_at, now)));
    }
    body.push_str("</section><section><h2>Usage, 24 h</h2>");
    body.push_str(&usage.spark(&k.display_prefix));
    body.push_str(&usage.outcome_table());
    body.push_str("</section>");
    if authed.can_change() && k.revoked_at == 0 {
        let csrf = html::csrf_field(&authed.csrf);
        let id = esc(&url(&k.id)).to_string();
        let _ = write!(
            body,
            "<section class=\"actions\"><h2>Change</h2>\
             <form method=\"post\" action=\"/keys/{id}/rotate\" id=\"rotate\" class=\"card\">{csrf}\
             <label for=\"grace\">Rotate: the current secret keeps working for</label>\
             <input id=\"grace\" name=\"grace\" value=\"1h\" required>\
             <button type=\"submit\">Rotate</button></form>\
             <form method=\"post\" action=\"/keys/{id}/revoke\" id=\"revoke\" class=\"card\">{csrf}\
             <label for=\"reason\">Revoke; reason</label><input id=\"reason\" name=\"reason\">\
             <button type=\"submit\" class=\"danger\">Revoke</button></form></section>"
        );
    }
    body.push_str("<section><h2>Audit trail</h2>");
    body.push_str(&audit_table(trail, now));
    body.push_str("</section>");
    body
}

// ---- changes ----------------------------------------------------------------------------------

pub(super) async fn new_key(authed: Authed) -> Page {
    if !authed.can_change() {
        return Err(PageError::Forbidden("A viewer session cannot create keys."));
    }
    let body = format!(
        "<form method=\"post\" action=\"/keys\" id=\"create\" class=\"card\">{}\
         <label for=\"consumer\">Consumer (id or name; created when new)</label>\
         <input id=\"consumer\" name=\"consumer\" required>\
         <label for=\"name\">Key name</label><input id=\"name\" name=\"name\">\
         <label for=\"scopes\">Scopes (separated by spaces)</label><input id=\"scopes\" name=\"scopes\">\
         <label for=\"ttl\">Expires after (e.g. 30d; empty: never)</label><input id=\"ttl\" name=\"ttl\">\
         <button type=\"submit\">Create key</button></form>",
        html::csrf_field(&authed.csrf)
    );
    Ok(html_page(&authed.frame("Create key"), &body))
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    consumer: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    ttl: String,
}

/// The page that shows a new secret, once: it is in this response only (never stored, never
/// cached: `Cache-Control: no-store`).
fn secret_page(authed: &Authed, title: &str, intro: &str, key: Option<&pb::Key>, secret: &str) -> Response {
    let id = key.map(|k| k.id.as_str()).unwrap_or_default();
    let body = format!(
        "<p>{}</p><p class=\"secret\"><code id=\"secret\">{}</code></p>\
         <p class=\"warning\">This is the only time the key is shown: copy it now. The service keeps only a hash \
         of it.</p><p>{}</p>",
        esc(intro),
        esc(secret),
        key_link(id, "Go to the key")
    );
    html_page(&authed.frame(title), &body)
}

pub(super) async fn create_key(
    Extract(state): Extract<State>,
    authed: Authed,
    Form(form): Form<CreateForm>,
) -> Page {
    may_change(&state, &authed, &form.csrf)?;
    let consumer = form.consumer.trim().to_owned();
    if consumer.is_empty() {
        return Err(bad("consumer: is required"));
    }
    let ttl_seconds = if form.ttl.trim().is_empty() {
        0
    } else {
        html::duration_secs(&form.ttl).map_err(|e| PageError::BadRequest(format!("expires after: {e}")))?
    };
    let scopes: Vec<String> = form
        .scopes
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let request = pb::CreateKeyRequest {
        consumer,
        create_consumer: true,
        name: form.name.trim().to_owned(),
        scopes,
        ttl_seconds,
        ..Default::default()
    };
    let created = state.0.service.create_key(admin_request(request)).await?.into_inner();
    let intro = "The key was created. Give it to its consumer:";
    Ok(secret_page(&authed, "Key created", intro, created.key.as_ref(), &created.secret))
}

#[derive(Deserialize)]
pub(super) struct RotateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace: String,
}

pub(super) async fn rotate_key(
    Extract(state): Extract<State>,
    authed: Authed,
    Path(id): Path<String>,
    Form(form): Form<RotateForm>,
) -> Page {
    may_change(&state, &authed, &form.csrf)?;
    let id = key_id(&id)?.to_owned();
    let grace = html::duration_secs(&form.grace).map_err(|e| PageError::BadRequest(format!("grace: {e}")))?;
    if grace > validate::MAX_GRACE_SECONDS {
        return Err(PageError::BadRequest("grace: must be at most 30 days".to_owned()));
    }
    let request = pb::RotateKeyRequest { id, grace_period_seconds: grace };
    let rotated = state.0.service.rotate_key(admin_request(request)).await?.into_inner();
    let intro = format!(
        "The key was rotated; the previous secret keeps working for {}. The new secret:",
        html::span(i64::try_from(grace).unwrap_or(i64::MAX))
    );
    Ok(secret_page(&authed, "Key rotated", &intro, rotated.key.as_ref(), &rotated.secret))
}

#[derive(Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn revoke_key(
    Extract(state): Extract<State>,
    authed: Authed,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Page {
    may_change(&state, &authed, &form.csrf)?;
    let id = key_id(&id)?.to_owned();
    let reason =
        if form.reason.trim().is_empty() { "revoked in the dashboard".to_owned() } else { form.reason };
    let request = pb::RevokeKeyRequest { id: id.clone(), reason };
    state.0.service.revoke_key(admin_request(request)).await?;
    Ok(Redirect::to(&format!("/keys/{}", url(&id))).into_response())
}

// ---- audit ------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    consumer: String,
    #[serde(default)]
    before: String,
}

pub(super) async fn audit(
    Extract(state): Extract<State>,
    authed: Authed,
    Query(query): Query<AuditQuery>,
) -> Page {
    let given = |v: &str| {
        let v = v.trim();
        if v.is_empty() { None } else { Some(v.to_owned()) }
    };
    for (field, value) in [
        ("action", &query.action),
        ("actor", &query.actor),
        ("key", &query.key),
        ("consumer", &query.consumer),
    ] {
        if value.chars().count() > validate::MAX_NAME_LEN {
            return Err(PageError::BadRequest(format!("{field}: is too long")));
        }
    }
    let before = if query.before.trim().is_empty() {
        None
    } else {
        Some(query.before.trim().parse::<u64>().map_err(|_| bad("before: must be an audit entry number"))?)
    };
    let filter = AuditFilter {
        action: given(&query.action),
        actor: given(&query.actor),
        key_id: given(&query.key),
        consumer_id: given(&query.consumer),
    };
    let mut entries =
        blocking(&state.0.store, move |s| s.list_audit_recent(&filter, before, PAGE_ROWS + 1)).await?;
    let more = entries.len() > PAGE_ROWS;
    entries.truncate(PAGE_ROWS);
    let now = state.0.clock.now();
    let mut body = format!(
        "<form method=\"get\" action=\"/audit\" class=\"filters\">\
         <label>action <select name=\"action\">{}</select></label>\
         <label>actor <input name=\"actor\" value=\"{}\"></label>\
         <label>key <input name=\"key\" value=\"{}\"></label>\
         <label>consumer <input name=\"consumer\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        action_options(&query.action),
        esc(&query.actor),
        esc(&query.key),
        esc(&query.consumer)
    );
    body.push_str(&audit_table(&entries, now));
    if let (true, Some(last)) = (more, entries.last()) {
        let _ = write!(
            body,
            "<p><a rel=\"next\" href=\"/audit?action={}&amp;actor={}&amp;key={}&amp;consumer={}&amp;before={}\">Older entries</a></p>",
            esc(&url(&query.action)),
            esc(&url(&query.actor)),
            esc(&url(&query.key)),
            esc(&url(&query.consumer)),
            last.seq
        );
    }
    Ok(html_page(&authed.frame("Audit log"), &body))
}

/// The audit actions the service writes, as filter options.
const ACTIONS: [&str; 7] = [
    "consumer.create",
    "consumer.update",
    "consumer.delete",
    "key.create",
    "key.update",
    "key.revoke",
    "key.rotate",
];

fn action_options(selected: &str) -> String {
    let mut out = String::from("<option value=\"\">any</option>");
    let mut listed = false;
    for action in ACTIONS {
        let mark = if action == selected {
            listed = true;
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option value=\"{action}\"{mark}>{action}</option>");
    }
    if !listed && !selected.is_empty() {
        let _ = write!(out, "<option value=\"{0}\" selected>{0}</option>", esc(selected));
    }
    out
}

// ---- static and fallbacks ---------------------------------------------------------------------

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], super::STYLE_CSS).into_response()
}

pub(super) async fn not_found() -> Response {
    PageError::NotFound("There is no such page.".to_owned()).into_response()
}
