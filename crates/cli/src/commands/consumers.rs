//! `tollgate consumers …`: create, list, get and delete consumers.

use tollgate_proto::v1::{
    CreateConsumerRequest, DeleteConsumerRequest, GetConsumerRequest, ListConsumersRequest,
};

use super::{metadata_map, more_hint};
use crate::Output;
use crate::args::ConsumersCommand;
use crate::client::{CliError, Client};
use crate::output::{self, ConsumerView};

/// Runs one `consumers` command.
pub async fn run(cmd: ConsumersCommand, client: &mut Client, o: &mut Output<'_>) -> Result<(), CliError> {
    match cmd {
        ConsumersCommand::Create { name, id, meta } => {
            let request =
                CreateConsumerRequest { id: id.unwrap_or_default(), name, metadata: metadata_map(meta)? };
            let consumer = client.create_consumer(request).await?.into_inner();
            if o.json {
                output::write_json(o.out, &ConsumerView::from(&consumer))?;
            } else {
                output::write_consumer_detail(o.out, &consumer)?;
            }
        }
        ConsumersCommand::List { page } => {
            let mut request = ListConsumersRequest {
                page_size: page.limit.unwrap_or(0),
                page_token: page.page_token.unwrap_or_default(),
            };
            let mut consumers = Vec::new();
            let next = loop {
                let response = client.list_consumers(request.clone()).await?.into_inner();
                consumers.extend(response.consumers);
                if !page.all || response.next_page_token.is_empty() {
                    break response.next_page_token;
                }
                request.page_token = response.next_page_token;
            };
            if o.json {
                let views: Vec<ConsumerView> = consumers.iter().map(ConsumerView::from).collect();
                output::write_json(o.out, &views)?;
            } else {
                output::write_consumer_table(o.out, &consumers)?;
            }
            more_hint(o, &next)?;
        }
        ConsumersCommand::Get { id } => {
            let consumer = client.get_consumer(GetConsumerRequest { id }).await?.into_inner();
            if o.json {
                output::write_json(o.out, &ConsumerView::from(&consumer))?;
            } else {
                output::write_consumer_detail(o.out, &consumer)?;
            }
        }
        ConsumersCommand::Delete { id } => {
            let response =
                client.delete_consumer(DeleteConsumerRequest { id: id.clone() }).await?.into_inner();
            if o.json {
                let value = serde_json::json!({"id": id, "revoked_keys": response.revoked_keys});
                output::write_json(o.out, &value)?;
            } else {
                let n = response.revoked_keys;
                let keys = if n == 1 { "key" } else { "keys" };
                writeln!(o.out, "Deleted consumer {id}; revoked {n} {keys}.")?;
            }
        }
    }
    Ok(())
}
