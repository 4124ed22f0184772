//! JSON body fields: paths (JSON Pointer or dotted), typed values and the operations on them,
//! applied to a [`Doc`] so that what no operation touches keeps its exact bytes.

use super::Op;
use super::doc::{Doc, JsonText};
use super::request::{Captures, Request};
use super::template::Template;

/// The most segments a path may have (it bounds how deep a document is opened).
pub const MAX_PATH_SEGMENTS: usize = 32;

/// A field address: `/a/b/0` (RFC 6901 JSON Pointer) or `a.b.0` (dotted). A numeric segment
/// indexes an array; `-` names the end of an array (to append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<String>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<String> = if let Some(pointer) = text.strip_prefix('/') {
            pointer.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect()
        } else {
            text.split('.').map(str::to_owned).collect()
        };
        if text.is_empty() || (!text.starts_with('/') && segments.iter().any(String::is_empty)) {
            return Err(format!("`{text}` is not a field path (use `a.b.0` or `/a/b/0`)"));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!("`{text}` has more than {MAX_PATH_SEGMENTS} segments"));
        }
        Ok(Self { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

/// How a rendered string template becomes a JSON value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    #[default]
    String,
    /// A JSON number, written digit for digit as rendered (`18446744073709551617` stays so).
    Number,
    Boolean,
    /// The text is parsed as JSON and written as it is.
    Json,
}

impl ValueType {
    pub fn coerce(self, text: &[u8]) -> Result<JsonText, String> {
        let fail = || format!("`{}` is not a {}", super::shown(text), self.name());
        match self {
            ValueType::String => match std::str::from_utf8(text) {
                Ok(t) => Ok(JsonText::string(t)),
                Err(_) => Err(format!("`{}` is not UTF-8 text", super::shown(text))),
            },
            ValueType::Number => JsonText::number(text.trim_ascii()).ok_or_else(fail),
            ValueType::Boolean => match text.trim_ascii().to_ascii_lowercase().as_slice() {
                b"true" => Ok(JsonText::from(true)),
                b"false" => Ok(JsonText::from(false)),
                _ => Err(fail()),
            },
            ValueType::Json => JsonText::parse(text).map_err(|_| fail()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Json => "JSON value",
        }
    }
}

/// The value a body operation writes.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyValue {
    /// A JSON value from the config (number, boolean, object, array, null), written as it is
    /// in the config, digit for digit.
    Literal(JsonText),
    /// A string template, rendered and then coerced to the type.
    Template(Template, ValueType),
}

impl BodyValue {
    /// `Ok(None)` when a placeholder has no value.
    fn render(&self, req: &Request, captures: &Captures) -> Result<Option<JsonText>, String> {
        match self {
            BodyValue::Literal(v) => Ok(Some(v.clone())),
            BodyValue::Template(t, ty) => match t.render(req, captures) {
                Some(text) => ty.coerce(&text).map(Some),
                None => Ok(None),
            },
        }
    }
}

/// Applies one operation to a document: `Ok(true)` if it changed something, `Err` with the
/// reason when it cannot apply (a parent that is not a container, a bad index, a value that
/// does not coerce); an error changes nothing.
pub fn apply(
    doc: &mut Doc,
    op: &Op<JsonPath, BodyValue>,
    req: &Request,
    captures: &Captures,
) -> Result<bool, String> {
    match op {
        Op::Remove(path) => Ok(doc.remove(path.segments())),
        Op::Rename(from, to) => doc.rename(from.segments(), to.segments()),
        Op::Replace(path, v) => {
            if doc.kind_at(path.segments()).is_none() {
                return Ok(false);
            }
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            doc.set(path.segments(), &value)?;
            Ok(true)
        }
        Op::Add(path, v) => {
            if doc.kind_at(path.segments()).is_some() {
                return Ok(false);
            }
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            doc.set(path.segments(), &value)?;
            Ok(true)
        }
        Op::Append(path, v) => {
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            doc.append(path.segments(), &value)?;
            Ok(true)
        }
        Op::Set(path, v) => {
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            doc.set(path.segments(), &value)?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    fn tv(s: &str, ty: ValueType) -> BodyValue {
        BodyValue::Template(Template::parse(s).unwrap(), ty)
    }

    fn lit(json: &str) -> BodyValue {
        BodyValue::Literal(JsonText::parse(json.as_bytes()).unwrap())
    }

    fn run(doc: &mut Doc, op: Op<JsonPath, BodyValue>) -> Result<bool, String> {
        let req = Request::from_headers(vec![
            ("x-n".into(), "42".into()),
            ("x-big".into(), "18446744073709551617".into()),
            ("x-bytes".into(), b"\xff".to_vec()),
            (":method".into(), "GET".into()),
        ]);
        apply(doc, &op, &req, &Captures::default())
    }

    const DOC: &str = r#"{"user": {"name": "bob", "tags": ["a", "b"], "secret": "s"}, "n": 1}"#;

    fn doc() -> Doc {
        Doc::parse(DOC.as_bytes().to_vec()).unwrap()
    }

    fn text(d: &Doc) -> String {
        String::from_utf8(d.to_bytes()).unwrap()
    }

    #[test]
    fn pointer_and_dotted_paths_address_the_same_field() {
        let mut d = doc();
        assert_eq!(p("/user/tags/1").segments(), p("user.tags.1").segments());
        assert!(d.kind_at(p("user.tags.1").segments()).is_some());
        assert!(d.kind_at(p("user.missing.x").segments()).is_none());
        assert!(d.kind_at(p("user.tags.01").segments()).is_none(), "no leading zeros");
        assert_eq!(p("/a~1b/c~0d").segments, vec!["a/b", "c~d"]);
        assert!(JsonPath::parse("").is_err());
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse(&["a"; 33].join(".")).unwrap_err().contains("more than 32"));
    }

    #[test]
    fn remove_nested_field_and_array_element() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Remove(p("user.secret"))), Ok(true));
        assert_eq!(run(&mut d, Op::Remove(p("/user/tags/0"))), Ok(true));
        assert_eq!(run(&mut d, Op::Remove(p("user.nothing.here"))), Ok(false));
        assert_eq!(run(&mut d, Op::Remove(p("user.tags.9"))), Ok(false));
        assert_eq!(text(&d), r#"{"user": {"name": "bob", "tags": [ "b"]}, "n": 1}"#);
    }

    #[test]
    fn rename_moves_a_value_creating_parents() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Rename(p("user.name"), p("profile.display_name"))), Ok(true));
        assert_eq!(run(&mut d, Op::Rename(p("user.name"), p("x"))), Ok(false));
        assert_eq!(
            text(&d),
            r#"{"user": { "tags": ["a", "b"], "secret": "s"}, "n": 1, "profile": {"display_name":"bob"}}"#
        );
        // A rename that cannot finish leaves the document as it was.
        let mut d = doc();
        assert!(run(&mut d, Op::Rename(p("user.name"), p("n.under"))).is_err());
        assert_eq!(text(&d), DOC);
        assert!(!d.changed());
    }

    #[test]
    fn replace_add_set_respect_presence() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Replace(p("n"), lit("2"))), Ok(true));
        assert_eq!(run(&mut d, Op::Replace(p("m"), lit("2"))), Ok(false));
        assert_eq!(run(&mut d, Op::Add(p("n"), lit("3"))), Ok(false));
        assert_eq!(run(&mut d, Op::Add(p("meta.source"), tv("gw", ValueType::String))), Ok(true));
        assert_eq!(run(&mut d, Op::Set(p("n"), lit(r#"{"k": [1]}"#))), Ok(true));
        assert_eq!(
            text(&d),
            r#"{"user": {"name": "bob", "tags": ["a", "b"], "secret": "s"}, "n": {"k": [1]}, "meta": {"source":"gw"}}"#
        );
    }

    #[test]
    fn append_builds_arrays() {
        let mut d = doc();
        run(&mut d, Op::Append(p("user.tags"), tv("c", ValueType::String))).unwrap();
        run(&mut d, Op::Append(p("user.name"), tv("bobby", ValueType::String))).unwrap();
        run(&mut d, Op::Append(p("list"), lit("1"))).unwrap();
        run(&mut d, Op::Set(p("/user/tags/-"), tv("d", ValueType::String))).unwrap();
        assert_eq!(
            text(&d),
            r#"{"user": {"name": ["bob","bobby"], "tags": ["a", "b", "c", "d"], "secret": "s"}, "n": 1, "list": [1]}"#
        );
    }

    #[test]
    fn templates_are_coerced_to_their_type_digit_for_digit() {
        let mut d = Doc::parse(b"{}".to_vec()).unwrap();
        run(&mut d, Op::Set(p("num"), tv("{header.x-n}", ValueType::Number))).unwrap();
        run(&mut d, Op::Set(p("big"), tv("{header.x-big}", ValueType::Number))).unwrap();
        run(&mut d, Op::Set(p("float"), tv(" 2.50E+3 ", ValueType::Number))).unwrap();
        run(&mut d, Op::Set(p("flag"), tv("TRUE", ValueType::Boolean))).unwrap();
        run(&mut d, Op::Set(p("obj"), tv(r#"{{"m": "{method}", "n": 1e400}}"#, ValueType::Json))).unwrap();
        run(&mut d, Op::Set(p("text"), tv("{header.x-n}\"", ValueType::String))).unwrap();
        assert_eq!(
            text(&d),
            r#"{"num":42,"big":18446744073709551617,"float":2.50E+3,"flag":true,"obj":{"m": "GET", "n": 1e400},"text":"42\""}"#
        );
        let e = run(&mut d, Op::Set(p("num"), tv("{method}", ValueType::Number))).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = run(&mut d, Op::Set(p("s"), tv("{header.x-bytes}", ValueType::String))).unwrap_err();
        assert!(e.contains("not UTF-8") && !e.contains('\u{fffd}'), "{e}");
        for bad in ["yes", "1"] {
            assert!(ValueType::Boolean.coerce(bad.as_bytes()).is_err());
        }
        for bad in ["NaN", "inf", "+1", ".5", "01", "1.", "1e", "0x10", ""] {
            assert!(ValueType::Number.coerce(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_under_scalars_or_past_the_end_are_errors_not_panics() {
        let mut d = doc();
        assert!(run(&mut d, Op::Set(p("n.x"), lit("1"))).is_err());
        assert!(run(&mut d, Op::Set(p("user.tags.5"), lit("1"))).is_err());
        assert!(run(&mut d, Op::Set(p("user.tags.x.y"), lit("1"))).is_err());
        assert!(run(&mut d, Op::Append(p("n.x"), lit("1"))).is_err());
        assert_eq!(text(&d), DOC);
        assert!(!d.changed());
        // A top-level array document.
        let mut arr = Doc::parse(br#"[{"id": 1}, {"id": 2}]"#.to_vec()).unwrap();
        assert_eq!(run(&mut arr, Op::Remove(p("1.id"))), Ok(true));
        assert_eq!(text(&arr), r#"[{"id": 1}, {}]"#);
    }

    #[test]
    fn a_missing_template_value_skips() {
        let mut d = doc();
        assert_eq!(
            run(&mut d, Op::Set(p("who"), tv("{identity.consumer_id}", ValueType::String))),
            Ok(false)
        );
        assert_eq!(text(&d), DOC);
        assert!(!d.changed());
    }
}
