//! `bus events send` and `bus events listen`: the Events API client.

use super::{refuse_literal_token, Failure};
use crate::broker::http::{HttpBroker, HttpBrokerConfig};
use crate::broker::{Broker, Delivery, SubscribeSpec};
use crate::contract::{validate_name, Envelope, Publication};
use crate::credentials::TokenSource;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Events API origin or full `.../api/v1/events` URL.
    #[arg(
        long,
        env = "BUS_EVENTS_API_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub events_url: String,
    /// Refused: tokens do not belong on the command line.
    #[arg(long, hide = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish one event; prints the server's acceptance.
    Send {
        #[command(flatten)]
        client: ClientArgs,
        /// Event name.
        #[arg(long)]
        name: String,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Correlation id of a request/reply pair.
        #[arg(long)]
        correlation_id: Option<String>,
    },
    /// Print events as NDJSON, one envelope per line.
    Listen {
        #[command(flatten)]
        client: ClientArgs,
        /// Event name.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value_t)]
        delivery: DeliveryArg,
        /// Unicast group.
        #[arg(long, default_value = "default")]
        group: String,
        /// Consumer label.
        #[arg(long, default_value = "default")]
        consumer: String,
        /// First print the stored events of the name.
        #[arg(long)]
        replay: bool,
        /// Exit after the replay instead of following.
        #[arg(long)]
        no_follow: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum DeliveryArg {
    #[default]
    Broadcast,
    Unicast,
}

fn broker(client: &ClientArgs) -> Result<HttpBroker, Failure> {
    refuse_literal_token(&client.token)?;
    let token = TokenSource::for_events_client().map_err(Failure::usage)?;
    let config = HttpBrokerConfig::from_env(&client.events_url, token).map_err(Failure::usage)?;
    HttpBroker::new(config).map_err(Failure::error)
}

pub fn run(cmd: EventsCommand) -> Result<(), Failure> {
    match cmd {
        EventsCommand::Send {
            client,
            name,
            payload,
            correlation_id,
        } => {
            validate_name(&name).map_err(|e| Failure::usage(e.to_string()))?;
            let payload: serde_json::Value = serde_json::from_str(&payload)
                .map_err(|e| Failure::usage(format!("--payload is not JSON: {e}")))?;
            let broker = broker(&client)?;
            let mut publication = Publication::new(name.clone(), payload);
            publication.correlation_id = correlation_id;
            actix_rt::System::new().block_on(async move {
                let id = broker
                    .publish(Envelope::stamp(publication, "", false))
                    .await?;
                super::print_line(
                    &serde_json::json!({"accepted": true, "id": id, "name": name}).to_string(),
                )
            })
        }
        EventsCommand::Listen {
            client,
            name,
            delivery,
            group,
            consumer,
            replay,
            no_follow,
            count,
        } => {
            validate_name(&name).map_err(|e| Failure::usage(e.to_string()))?;
            let broker = broker(&client)?;
            let spec = SubscribeSpec {
                name,
                delivery: match delivery {
                    DeliveryArg::Broadcast => Delivery::Broadcast,
                    DeliveryArg::Unicast => Delivery::Unicast { group },
                },
                consumer,
                replay,
                follow: !no_follow,
                identity: None,
            };
            actix_rt::System::new().block_on(async move {
                let mut events = broker.subscribe(spec).await?;
                let mut seen = 0u64;
                let stdout = std::io::stdout();
                while count.is_none_or(|c| seen < c) {
                    let Some(event) = events.next().await else {
                        break;
                    };
                    let event = event?;
                    let mut out = stdout.lock();
                    out.write_all(event.line()).map_err(Failure::write)?;
                    out.flush().map_err(Failure::write)?;
                    seen += 1;
                }
                Ok(())
            })
        }
    }
}
