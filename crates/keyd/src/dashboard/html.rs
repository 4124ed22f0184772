//! HTML building blocks: escaping, the page frame, times, durations and SVG sparklines.
//!
//! Every value that comes from the database or the request goes through [`esc`] (text and
//! attribute values alike) or, inside a URL, through [`url`] first. Pages carry no inline style or
//! script, so `Content-Security-Policy: default-src 'self'` holds.

use std::fmt::{self, Display, Write as _};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Text made safe for HTML element content and quoted attribute values.
pub struct Escaped<'a>(&'a str);

/// Escapes `&`, `<`, `>`, `"` and `'`.
pub fn esc(text: &str) -> Escaped<'_> {
    Escaped(text)
}

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            let (plain, tail) = rest.split_at(i);
            f.write_str(plain)?;
            let mut chars = tail.chars();
            let entity = match chars.next() {
                Some('&') => "&amp;",
                Some('<') => "&lt;",
                Some('>') => "&gt;",
                Some('"') => "&quot;",
                _ => "&#39;",
            };
            f.write_str(entity)?;
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

/// A value percent-encoded for a URL query or path segment (then escaped for HTML by the
/// caller: `esc(&url(v))`; percent-encoding leaves nothing HTML-special, the escape is belt and
/// braces).
pub fn url(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// The role a page is shown to, and what it needs to render the frame.
pub struct Frame<'a> {
    pub title: &'a str,
    /// `None` on the login and error pages shown without a session.
    pub role: Option<&'a str>,
    pub can_change: bool,
    pub csrf: &'a str,
}

/// A whole page: the frame (navigation, log-out form) around `body`.
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tollgate</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>",
        esc(frame.title)
    );
    if let Some(role) = frame.role {
        out.push_str(
            "<header><nav><a class=\"brand\" href=\"/\">Tollgate</a><a href=\"/\">Overview</a>\
             <a href=\"/consumers\">Consumers</a><a href=\"/keys\">Keys</a><a href=\"/audit\">Audit</a>",
        );
        if frame.can_change {
            out.push_str("<a href=\"/keys/new\">Create key</a>");
        }
        let _ = write!(
            out,
            "<span class=\"role\">{}</span><form class=\"inline\" method=\"post\" action=\"/logout\">{}\
             <button type=\"submit\">Log out</button></form></nav></header>",
            esc(role),
            csrf_field(frame.csrf)
        );
    }
    let _ = writeln!(out, "<main><h1>{}</h1>{body}</main></body></html>", esc(frame.title));
    out
}

/// The hidden CSRF field of a form that changes something.
pub fn csrf_field(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(token))
}

/// The login form, with an optional message above it.
pub fn login_body(message: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(message) = message {
        let _ = write!(out, "<p class=\"error\" id=\"login-error\">{}</p>", esc(message));
    }
    out.push_str(
        "<form method=\"post\" action=\"/login\" class=\"card\" id=\"login\">\
         <label for=\"token\">Admin or viewer token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required autofocus>\
         <button type=\"submit\">Log in</button></form>",
    );
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ` (UTC); `—` for 0 (unset).
pub fn time(secs: i64) -> String {
    if secs == 0 {
        return "—".to_owned();
    }
    let (year, month, day, hour, minute, second) = crate::clock::utc(secs);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}Z")
}

/// A span of seconds, roughly: `45s`, `12m`, `3h 5m`, `2d 4h`.
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h {}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// `time(at)` and how long ago or ahead of `now` it is.
pub fn time_rel(at: i64, now: i64) -> String {
    if at == 0 {
        return "—".to_owned();
    }
    if at <= now {
        format!("{} ({} ago)", time(at), span(now - at))
    } else {
        format!("{} (in {})", time(at), span(at - now))
    }
}

/// The most a duration typed into a form may be: 100 years.
const MAX_DURATION: u64 = 100 * 365 * 86_400;

/// Parses a duration typed into a form — `90s`, `15m`, `12h`, `30d`, `1w`, `1h30m` or `0` — into
/// seconds. The message says what was expected.
pub fn duration_secs(text: &str) -> Result<u64, String> {
    use tollgate_core::duration::{CompoundError, compound_secs};
    let shown: String = text.trim().chars().take(32).collect();
    match compound_secs(text) {
        Ok(total) if total <= MAX_DURATION => Ok(total),
        Ok(_) | Err(CompoundError::TooLong) => Err(format!("{shown:?} is too long")),
        Err(_) => Err(format!("{shown:?} is not a duration: use e.g. 90s, 15m, 12h, 30d or 1h30m")),
    }
}

/// Width and height of a sparkline, in SVG user units (and CSS pixels).
const SPARK_WIDTH: u64 = 120;
const SPARK_HEIGHT: u64 = 24;

/// An inline SVG line of `values` (oldest first), scaled to its largest value; `label` is read
/// out by screen readers. The line's colour comes from the style sheet.
pub fn sparkline(values: &[u64], label: &str) -> String {
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let steps = u64::try_from(values.len().saturating_sub(1)).unwrap_or(1).max(1);
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let i = u64::try_from(i).unwrap_or(0);
        let x = i * SPARK_WIDTH / steps;
        // 1 unit of margin top and bottom so the stroke is not cut.
        let y = SPARK_HEIGHT - 1 - v.saturating_mul(SPARK_HEIGHT - 2) / max;
        if !points.is_empty() {
            points.push(' ');
        }
        let _ = write!(points, "{x},{y}");
    }
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {SPARK_WIDTH} {SPARK_HEIGHT}\" width=\"{SPARK_WIDTH}\" \
         height=\"{SPARK_HEIGHT}\" role=\"img\" aria-label=\"{}\"><polyline points=\"{points}\"/></svg>",
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(esc("<script>alert(1)</script>").to_string(), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(esc("a\"b'c&d").to_string(), "a&quot;b&#39;c&amp;d");
        assert_eq!(esc("&amp;").to_string(), "&amp;amp;", "escaping is not undone");
        assert_eq!(esc("plain ünïcødé → ok").to_string(), "plain ünïcødé → ok");
        assert_eq!(esc("").to_string(), "");
        assert_eq!(esc("<<>>").to_string(), "&lt;&lt;&gt;&gt;");
    }

    #[test]
    fn url_values_are_percent_encoded() {
        assert_eq!(url("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
        assert_eq!(url("key_AZ09"), "key%5FAZ09");
    }

    #[test]
    fn the_page_title_is_escaped_in_title_and_heading() {
        let frame = Frame { title: "<b>x</b>", role: Some("viewer"), can_change: false, csrf: "t\"" };
        let html = page(&frame, "");
        assert!(!html.contains("<b>"), "{html}");
        assert_eq!(html.matches("&lt;b&gt;x&lt;/b&gt;").count(), 2);
        assert!(html.contains("value=\"t&quot;\""), "{html}");
        assert!(!html.contains("/keys/new"), "a viewer is not offered the create form");
        let admin = page(&Frame { title: "t", role: Some("admin"), can_change: true, csrf: "c" }, "");
        assert!(admin.contains("/keys/new"));
        assert!(!html.contains("style="), "no inline styles");
    }

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(time(0), "—");
        assert_eq!(time(1), "1970-01-01 00:00:01Z");
        assert_eq!(time(1_800_000_000), "2027-01-15 08:00:00Z");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(time(-1), "1969-12-31 23:59:59Z");
        assert_eq!(span(59), "59s");
        assert_eq!(span(3_660), "1h 1m");
        assert_eq!(span(90_000), "1d 1h");
        assert_eq!(time_rel(100, 160), "1970-01-01 00:01:40Z (1m ago)");
    }

    #[test]
    fn durations_parse_in_each_unit_and_refuse_junk() {
        assert_eq!(duration_secs("0"), Ok(0));
        assert_eq!(duration_secs("90s"), Ok(90));
        assert_eq!(duration_secs(" 1h30m "), Ok(5_400));
        assert_eq!(duration_secs("2d"), Ok(172_800));
        assert_eq!(duration_secs("1w"), Ok(604_800));
        for bad in ["", "1", "h", "1x", "-1h", "1h 30m", "1.5h", "99999999999999999999s", "101y", "40000d"] {
            let err = duration_secs(bad).unwrap_err();
            assert!(err.contains("duration") || err.contains("too long"), "{bad}: {err}");
        }
    }

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        let svg = sparkline(&[0, 5, 10], "requests <24h>");
        assert!(svg.contains("points=\"0,23 60,12 120,1\""), "{svg}");
        assert!(svg.contains("aria-label=\"requests &lt;24h&gt;\""), "{svg}");
        let flat = sparkline(&[0, 0], "none");
        assert!(flat.contains("points=\"0,23 120,23\""), "{flat}");
        let one = sparkline(&[7], "one");
        assert!(one.contains("points=\"0,1\""), "{one}");
        assert!(sparkline(&[], "empty").contains("points=\"\""));
    }
}
