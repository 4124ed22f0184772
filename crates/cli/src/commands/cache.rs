//! `tollgate cache purge`: purge responses from every gateway's cache.

use serde::Serialize;
use tollgate_proto::v1::{CachePurge, PurgeCacheRequest};

use crate::Output;
use crate::args::CachePurgeArgs;
use crate::client::{CliError, Client};
use crate::output;

#[derive(Serialize)]
struct PurgeView {
    seq: u64,
}

/// Runs `cache purge`.
pub async fn purge(args: CachePurgeArgs, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    let purge = CachePurge {
        tag: args.tag.unwrap_or_default(),
        prefix: args.prefix.unwrap_or_default(),
        url: args.url.unwrap_or_default(),
        all: args.all,
        host: args.host.unwrap_or_default(),
        soft: args.soft,
    };
    let seq = client.purge_cache(PurgeCacheRequest { purge: Some(purge) }).await?.into_inner().seq;
    if o.json {
        output::write_json(o.out, &PurgeView { seq })?;
    } else {
        writeln!(o.out, "purge published at feed position {seq}; gateways apply it at their next poll")?;
    }
    Ok(())
}
