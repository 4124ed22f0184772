//! JSON body fields: paths (JSON Pointer or dotted), typed values and the operations on them.

use serde_json::{Map, Value};

use super::Op;
use super::request::{Captures, Request};
use super::template::Template;

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
        Ok(Self { segments })
    }

    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.segments.iter().try_fold(root, |v, seg| child(v, seg))
    }

    /// Removes the field; `Some(value)` if it was there.
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let parent = parents.iter().try_fold(root, |v, seg| child_mut(v, seg))?;
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let i = index(last)?;
                (i < items.len()).then(|| items.remove(i))
            }
            _ => None,
        }
    }

    /// Writes `value`, creating missing parent objects.
    pub fn set(&self, root: &mut Value, value: Value) -> Result<(), String> {
        let Some((last, parents)) = self.segments.split_last() else {
            return Err("empty path".to_owned());
        };
        let mut node = root;
        for seg in parents {
            node = match node {
                Value::Object(map) => map.entry(seg.clone()).or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => {
                    let len = items.len();
                    let i = index(seg).filter(|i| *i < len).ok_or_else(|| no_index(seg, len))?;
                    items.get_mut(i).ok_or_else(|| no_index(seg, len))?
                }
                _ => return Err(format!("`{seg}` is under a value that is not an object or array")),
            };
        }
        match node {
            Value::Object(map) => {
                map.insert(last.clone(), value);
                Ok(())
            }
            Value::Array(items) => {
                let len = items.len();
                if last == "-" {
                    items.push(value);
                    return Ok(());
                }
                match index(last) {
                    Some(i) if i < len => {
                        if let Some(slot) = items.get_mut(i) {
                            *slot = value;
                        }
                        Ok(())
                    }
                    Some(i) if i == len => {
                        items.push(value);
                        Ok(())
                    }
                    _ => Err(no_index(last, len)),
                }
            }
            _ => Err(format!("`{last}` is under a value that is not an object or array")),
        }
    }
}

fn no_index(seg: &str, len: usize) -> String {
    format!("`{seg}` is not an index of an array of {len}")
}

fn index(seg: &str) -> Option<usize> {
    if seg.len() > 1 && seg.starts_with('0') {
        return None;
    }
    seg.parse().ok()
}

fn child<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => items.get(index(seg)?),
        _ => None,
    }
}

fn child_mut<'a>(v: &'a mut Value, seg: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(map) => map.get_mut(seg),
        Value::Array(items) => items.get_mut(index(seg)?),
        _ => None,
    }
}

/// How a rendered string template becomes a JSON value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    #[default]
    String,
    Number,
    Boolean,
    /// The text is parsed as JSON.
    Json,
}

impl ValueType {
    pub fn coerce(self, text: &str) -> Result<Value, String> {
        let fail = || format!("`{text}` is not a {}", self.name());
        match self {
            ValueType::String => Ok(Value::String(text.to_owned())),
            ValueType::Number => {
                let t = text.trim();
                if let Ok(i) = t.parse::<i64>() {
                    return Ok(Value::from(i));
                }
                t.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(fail)
            }
            ValueType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(fail()),
            },
            ValueType::Json => serde_json::from_str(text).map_err(|_| fail()),
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
    /// A JSON value from the config (number, boolean, object, array, null), written as is.
    Literal(Value),
    /// A string template, rendered and then coerced to the type.
    Template(Template, ValueType),
}

impl BodyValue {
    /// `Ok(None)` when a placeholder has no value.
    fn render(&self, req: &Request, captures: &Captures) -> Result<Option<Value>, String> {
        match self {
            BodyValue::Literal(v) => Ok(Some(v.clone())),
            BodyValue::Template(t, ty) => match t.render(req, captures) {
                Some(text) => ty.coerce(&text).map(Some),
                None => Ok(None),
            },
        }
    }
}

/// Applies one operation to a parsed document: `Ok(true)` if it changed something, `Err` with
/// the reason when it cannot apply (a parent that is not a container, a bad index, a value
/// that does not coerce).
pub fn apply(
    doc: &mut Value,
    op: &Op<JsonPath, BodyValue>,
    req: &Request,
    captures: &Captures,
) -> Result<bool, String> {
    match op {
        Op::Remove(path) => Ok(path.remove(doc).is_some()),
        Op::Rename(from, to) => {
            if from.get(doc).is_none() {
                return Ok(false);
            }
            // Work on a copy so that a rename that cannot finish leaves the document as it was.
            let mut copy = doc.clone();
            let Some(value) = from.remove(&mut copy) else { return Ok(false) };
            to.set(&mut copy, value)?;
            *doc = copy;
            Ok(true)
        }
        Op::Replace(path, v) => {
            if path.get(doc).is_none() {
                return Ok(false);
            }
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            path.set(doc, value)?;
            Ok(true)
        }
        Op::Add(path, v) => {
            if path.get(doc).is_some() {
                return Ok(false);
            }
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            path.set(doc, value)?;
            Ok(true)
        }
        Op::Append(path, v) => {
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            let current = path.remove(doc);
            let list = match current {
                None => vec![value],
                Some(Value::Array(mut items)) => {
                    items.push(value);
                    items
                }
                Some(other) => vec![other, value],
            };
            path.set(doc, Value::Array(list))?;
            Ok(true)
        }
        Op::Set(path, v) => {
            let Some(value) = v.render(req, captures)? else { return Ok(false) };
            path.set(doc, value)?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    fn tv(s: &str, ty: ValueType) -> BodyValue {
        BodyValue::Template(Template::parse(s).unwrap(), ty)
    }

    fn run(doc: &mut Value, op: Op<JsonPath, BodyValue>) -> Result<bool, String> {
        let req = Request::from_headers(vec![("x-n".into(), "42".into()), (":method".into(), "GET".into())]);
        apply(doc, &op, &req, &Captures::default())
    }

    fn doc() -> Value {
        json!({"user": {"name": "bob", "tags": ["a", "b"], "secret": "s"}, "n": 1})
    }

    #[test]
    fn pointer_and_dotted_paths_address_the_same_field() {
        let d = doc();
        assert_eq!(p("/user/tags/1").get(&d), Some(&json!("b")));
        assert_eq!(p("user.tags.1").get(&d), Some(&json!("b")));
        assert_eq!(p("user.missing.x").get(&d), None);
        assert_eq!(p("/a~1b/c~0d").segments, vec!["a/b", "c~d"]);
        assert!(JsonPath::parse("").is_err());
        assert!(JsonPath::parse("a..b").is_err());
        assert_eq!(p("user.tags.01").get(&d), None);
    }

    #[test]
    fn remove_nested_field_and_array_element() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Remove(p("user.secret"))), Ok(true));
        assert_eq!(run(&mut d, Op::Remove(p("/user/tags/0"))), Ok(true));
        assert_eq!(run(&mut d, Op::Remove(p("user.nothing.here"))), Ok(false));
        assert_eq!(run(&mut d, Op::Remove(p("user.tags.9"))), Ok(false));
        assert_eq!(d, json!({"user": {"name": "bob", "tags": ["b"]}, "n": 1}));
    }

    #[test]
    fn rename_moves_a_value_creating_parents() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Rename(p("user.name"), p("profile.display_name"))), Ok(true));
        assert_eq!(run(&mut d, Op::Rename(p("user.name"), p("x"))), Ok(false));
        assert_eq!(d["profile"], json!({"display_name": "bob"}));
        assert!(d["user"].get("name").is_none());
    }

    #[test]
    fn replace_add_set_respect_presence() {
        let mut d = doc();
        assert_eq!(run(&mut d, Op::Replace(p("n"), BodyValue::Literal(json!(2)))), Ok(true));
        assert_eq!(run(&mut d, Op::Replace(p("m"), BodyValue::Literal(json!(2)))), Ok(false));
        assert_eq!(run(&mut d, Op::Add(p("n"), BodyValue::Literal(json!(3)))), Ok(false));
        assert_eq!(run(&mut d, Op::Add(p("meta.source"), tv("gw", ValueType::String))), Ok(true));
        assert_eq!(run(&mut d, Op::Set(p("n"), BodyValue::Literal(json!({"k": [1]})))), Ok(true));
        assert_eq!(d["n"], json!({"k": [1]}));
        assert_eq!(d["meta"]["source"], "gw");
        assert!(d.get("m").is_none());
    }

    #[test]
    fn append_builds_arrays() {
        let mut d = doc();
        run(&mut d, Op::Append(p("user.tags"), tv("c", ValueType::String))).unwrap();
        run(&mut d, Op::Append(p("user.name"), tv("bobby", ValueType::String))).unwrap();
        run(&mut d, Op::Append(p("list"), BodyValue::Literal(json!(1)))).unwrap();
        assert_eq!(d["user"]["tags"], json!(["a", "b", "c"]));
        assert_eq!(d["user"]["name"], json!(["bob", "bobby"]));
        assert_eq!(d["list"], json!([1]));
        run(&mut d, Op::Set(p("/user/tags/-"), tv("d", ValueType::String))).unwrap();
        assert_eq!(d["user"]["tags"], json!(["a", "b", "c", "d"]));
    }

    #[test]
    fn templates_are_coerced_to_their_type() {
        let mut d = json!({});
        run(&mut d, Op::Set(p("num"), tv("{header.x-n}", ValueType::Number))).unwrap();
        run(&mut d, Op::Set(p("float"), tv("2.5", ValueType::Number))).unwrap();
        run(&mut d, Op::Set(p("flag"), tv("TRUE", ValueType::Boolean))).unwrap();
        run(&mut d, Op::Set(p("obj"), tv(r#"{{"m":"{method}"}}"#, ValueType::Json))).unwrap();
        run(&mut d, Op::Set(p("text"), tv("{header.x-n}", ValueType::String))).unwrap();
        assert_eq!(d, json!({"num": 42, "float": 2.5, "flag": true, "obj": {"m": "GET"}, "text": "42"}));
        let e = run(&mut d, Op::Set(p("num"), tv("{method}", ValueType::Number))).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        assert!(ValueType::Boolean.coerce("yes").is_err());
        assert!(ValueType::Number.coerce("NaN").is_err());
    }

    #[test]
    fn writes_under_scalars_or_past_the_end_are_errors_not_panics() {
        let mut d = doc();
        assert!(run(&mut d, Op::Set(p("n.x"), BodyValue::Literal(json!(1)))).is_err());
        assert!(run(&mut d, Op::Set(p("user.tags.5"), BodyValue::Literal(json!(1)))).is_err());
        assert!(run(&mut d, Op::Set(p("user.tags.x.y"), BodyValue::Literal(json!(1)))).is_err());
        assert_eq!(d, doc());
        // A top-level array document.
        let mut arr = json!([{"id": 1}, {"id": 2}]);
        assert_eq!(run(&mut arr, Op::Remove(p("1.id"))), Ok(true));
        assert_eq!(arr, json!([{"id": 1}, {}]));
    }

    #[test]
    fn a_missing_template_value_skips() {
        let mut d = doc();
        assert_eq!(
            run(&mut d, Op::Set(p("who"), tv("{identity.consumer_id}", ValueType::String))),
            Ok(false)
        );
        assert_eq!(d, doc());
    }
}
