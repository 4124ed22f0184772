//! `tollgate sign`: signs a request per RFC 9421 and prints the headers to add.

use std::path::PathBuf;

use tollgate_signing::{Options, Request, SigningMaterial};

use crate::args::SignArgs;
use crate::{CliError, Output};

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// A `Name: value` argument: the name in lowercase, the value's bytes without surrounding
/// spaces and tabs.
fn header(arg: &std::ffi::OsStr) -> Result<(String, Vec<u8>), CliError> {
    let bytes = arg_bytes(arg)?;
    let shown = String::from_utf8_lossy(&bytes).into_owned();
    let colon = bytes.iter().position(|b| *b == b':');
    let colon = colon.ok_or_else(|| usage(format!("header `{shown}` is not `Name: value`")))?;
    let name = std::str::from_utf8(&bytes[..colon])
        .ok()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| usage(format!("header `{shown}`: the name is not a field name")))?;
    let value = bytes[colon + 1..].trim_ascii();
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(usage(format!("header `{name}`: a value cannot hold CR, LF or NUL")));
    }
    Ok((name.to_ascii_lowercase(), value.to_vec()))
}

#[cfg(unix)]
fn arg_bytes(arg: &std::ffi::OsStr) -> Result<Vec<u8>, CliError> {
    use std::os::unix::ffi::OsStrExt as _;
    Ok(arg.as_bytes().to_vec())
}

#[cfg(not(unix))]
fn arg_bytes(arg: &std::ffi::OsStr) -> Result<Vec<u8>, CliError> {
    arg.to_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| usage("a header argument is not valid text"))
}

/// Signs and prints the headers (or, with --json, an object of them).
pub fn run(args: &SignArgs, o: &mut Output<'_>) -> Result<(), CliError> {
    let key = match (&args.secret_file, &args.private_key) {
        (Some(path), None) => {
            let text = String::from_utf8(read(path)?).map_err(usage)?;
            SigningMaterial::Hmac(tollgate_signing::hmac_secret(&text).map_err(usage)?)
        }
        (None, Some(path)) => {
            let text = String::from_utf8(read(path)?).map_err(usage)?;
            SigningMaterial::Ed25519(tollgate_signing::ed25519_private_key(&text).map_err(usage)?)
        }
        _ => return Err(usage("give exactly one of --secret-file or --private-key")),
    };
    let headers = args.headers.iter().map(|h| header(h)).collect::<Result<Vec<_>, _>>()?;
    let body = args.body_file.as_ref().map(read).transpose()?;
    let created = match args.created {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map_err(usage)?,
    };
    let mut options = Options::new(args.key_id.clone(), created);
    options.label = args.label.clone();
    options.include_alg = !args.no_alg;
    options.tag = args.tag.clone();
    if !args.components.is_empty() {
        options.components = Some(args.components.clone());
    }
    if args.nonce {
        options.nonce = Some(tollgate_signing::random_nonce().map_err(usage)?);
    }
    options.expires = args.expires_in.map(|s| created + i64::try_from(s).unwrap_or(i64::MAX / 2));
    let request = Request { method: &args.method, url: &args.url, headers, body: body.as_deref() };
    let signed = tollgate_signing::sign(&request, &key, &options).map_err(usage)?;
    if o.json {
        let map: serde_json::Map<String, serde_json::Value> =
            signed.headers().into_iter().map(|(n, v)| (n.to_owned(), serde_json::Value::String(v))).collect();
        crate::output::write_json(o.out, &map)?;
    } else {
        for (name, value) in signed.headers() {
            writeln!(o.out, "{name}: {value}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn sign_prints_the_three_headers() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let body = dir.path().join("body");
        std::fs::write(&body, br#"{"hello": "world"}"#).unwrap();
        let cli = Cli::try_parse_from([
            "tollgate",
            "sign",
            "--key-id",
            "key_1",
            "--secret-file",
            secret.to_str().unwrap(),
            "-X",
            "POST",
            "--url",
            "http://127.0.0.1:8080/orders?id=1",
            "--body-file",
            body.to_str().unwrap(),
            "--created",
            "1700000000",
        ])
        .unwrap();
        let Command::Sign(args) = cli.command else { panic!("not sign") };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&args, &mut Output { out: &mut out, err: &mut err, json: false }).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Content-Digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
        assert_eq!(
            lines[1],
            r#"Signature-Input: sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1700000000;keyid="key_1";alg="hmac-sha256""#
        );
        assert!(lines[2].starts_with("Signature: sig1=:") && lines[2].ends_with(':'));
    }

    /// `-H` takes the value's bytes as given: a covered header that is not UTF-8 is signed over
    /// its exact bytes (here with `bs`), and the signature verifies over those bytes only.
    #[cfg(unix)]
    #[test]
    fn header_values_that_are_not_utf8_are_signed_as_given() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt as _;

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let mut args: Vec<OsString> =
            ["tollgate", "sign", "--key-id", "key_1", "--secret-file"].iter().map(OsString::from).collect();
        args.push(secret.clone().into_os_string());
        args.extend(["--url", "http://h/bin", "--created", "1700000000", "--json"].map(OsString::from));
        args.extend(["--component", "@method", "--component", r#""x-bin";bs"#, "-H"].map(OsString::from));
        args.push(OsString::from_vec(b"X-Bin:  \xff\xfe ".to_vec()));
        let Command::Sign(sign_args) = Cli::try_parse_from(args).unwrap().command else { panic!("not sign") };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&sign_args, &mut Output { out: &mut out, err: &mut err, json: true }).unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let input = printed["Signature-Input"].as_str().unwrap();
        assert!(input.starts_with(r#"sig1=("@method" "x-bin";bs);created=1700000000"#), "{input}");
        // The library, given the exact bytes, signs the same; other bytes sign differently.
        let key = SigningMaterial::Hmac((0..32).collect());
        let mut options = Options::new("key_1", 1_700_000_000);
        options.components = Some(vec!["@method".into(), r#""x-bin";bs"#.into()]);
        let library = |bytes: &[u8]| {
            let request = Request {
                method: "GET",
                url: "http://h/bin",
                headers: vec![("x-bin".into(), bytes.to_vec())],
                body: None,
            };
            tollgate_signing::sign(&request, &key, &options).unwrap().signature
        };
        assert_eq!(printed["Signature"].as_str().unwrap(), library(&[0xff, 0xfe]));
        assert_ne!(printed["Signature"].as_str().unwrap(), library(&[0xfe, 0xff]));
        assert!(header(std::ffi::OsStr::new("no colon")).is_err());
        assert!(header(std::ffi::OsStr::new(": no name")).is_err());
    }
}
