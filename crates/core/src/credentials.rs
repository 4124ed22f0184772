//! Taking a credential off a request before it goes upstream (key-auth's `hide_credentials`,
//! jwt-auth's `forward_token: false`), so the upstream never sees what only the gateway checks.

use crate::route;

/// What taking a credential off a request changes in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal<'a> {
    /// Headers to remove, in the order of the sources that name them.
    pub headers: Vec<&'a str>,
    /// The new `:path`, when the query changed.
    pub path: Option<String>,
}

/// The edits that take a credential off a request: every header in `headers` goes, and every
/// query parameter named in `params` is dropped from `query` (the query of `path`, split with
/// [`route::split_path`]); `:path` is rewritten only when that changed the query.
pub fn removal<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    params: impl IntoIterator<Item = &'a str>,
    path: &str,
    query: &str,
) -> Removal<'a> {
    let new_query = params.into_iter().fold(query.to_owned(), |q, name| route::remove_query_param(&q, name));
    let path = (new_query != query)
        .then(|| if new_query.is_empty() { path.to_owned() } else { format!("{path}?{new_query}") });
    Removal { headers: headers.into_iter().collect(), path }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_and_the_path_changes_only_with_its_query() {
        let r = removal(["x-api-key"], ["api_key"], "/a", "b=1&api_key=k&c=2");
        assert_eq!(r, Removal { headers: vec!["x-api-key"], path: Some("/a?b=1&c=2".into()) });
        assert_eq!(removal([], ["api_key"], "/a", "api_key=k").path.as_deref(), Some("/a"));
        assert_eq!(removal([], ["api_key"], "/a", "b=1").path, None, "nothing to take off");
        assert_eq!(removal(["authorization"], [], "/a", "api_key=k").path, None, "no query source");
    }
}
