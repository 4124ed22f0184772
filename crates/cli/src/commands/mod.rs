//! What each command does: build the request from the parsed flags, call the key service (or,
//! for `sign`, nothing) and write the answer as a table or JSON.

pub mod cache;
pub mod consumers;
pub mod keys;
pub mod policies;
pub mod sign;
pub mod usage;
pub mod webhooks;

use std::collections::HashMap;

use crate::Output;
use crate::client::CliError;

/// `--meta` pairs as a map; a key given twice is a usage error.
pub fn metadata_map(entries: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::new();
    for (key, value) in entries {
        if map.insert(key.clone(), value).is_some() {
            return Err(CliError::Usage(format!("metadata key {key:?} given more than once")));
        }
    }
    Ok(map)
}

/// Tells, on stderr, how to get the next page when there is one.
pub fn more_hint(o: &mut Output<'_>, next: &str) -> Result<(), CliError> {
    if !next.is_empty() {
        writeln!(o.err, "more results: rerun with --all, or with --page-token {next}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_metadata_keys_are_rejected() {
        let err = metadata_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).unwrap_err();
        assert!(err.to_string().contains("\"a\""));
    }
}
