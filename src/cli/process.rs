//! What every long-running process shares: its connection to the bus, its
//! optional probe server (`--addr`), and a graceful stop on SIGINT/SIGTERM.

use super::failure::Failure;
use crate::actors::bus::requester::BusIdentity;
use crate::broker::http::{HttpBroker, HttpBrokerConfig};
use crate::broker::SharedBroker;
use crate::credentials::{token_subject, TokenSource};
use crate::http::probes::Probes;
use crate::http::server;
use crate::metrics::Metrics;
use crate::parse::parse_duration;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

/// Flags of a process that talks to a remote bus.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// Events API origin or full `.../api/v1/events` URL.
    #[arg(
        long,
        env = "BUS_EVENTS_API_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub events_url: String,
    /// Serve /readyz, /healthz and /metrics on this address (off by default).
    #[arg(long)]
    pub addr: Option<String>,
    /// NATS only: how long a durable run request may go unacknowledged
    /// before it is delivered again (its worker sends progress every third
    /// of it; a claim older than it belongs to a worker that is gone).
    #[arg(long, env = "BUS_NATS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub nats_ack_wait: Duration,
}

/// Where this process's bus is, and who it is there.
pub struct BusConnection {
    pub identity: BusIdentity,
    target: Target,
}

enum Target {
    Http(Arc<HttpBroker>),
    Nats(String, crate::broker::nats::NatsOptions),
}

impl BusConnection {
    /// Opens the broker; must run inside the process's actix System.
    pub async fn open(&self) -> Result<SharedBroker, Failure> {
        match &self.target {
            Target::Http(b) => Ok(b.clone()),
            Target::Nats(url, options) => {
                let broker = crate::broker::nats::NatsBroker::connect(url, options.clone()).await?;
                Ok(Arc::new(broker))
            }
        }
    }
}

/// Prepares the connection to `--events-url`: an Events API over HTTP with
/// the process's token (`BUS_API_TOKEN`, then the api-token file), or NATS
/// directly (`nats://...`; NATS's own credentials, a token is optional).
pub fn connect(args: &BusArgs) -> Result<BusConnection, Failure> {
    let source = TokenSource::for_events_client();
    if args.events_url.trim().starts_with("nats://") {
        let sub = source
            .ok()
            .and_then(|s| s.load().ok())
            .and_then(|t| token_subject(&t))
            .unwrap_or_else(|| format!("bus-{}", hostname()));
        return Ok(BusConnection {
            identity: BusIdentity::service(sub),
            target: Target::Nats(
                args.events_url.trim().to_owned(),
                crate::broker::nats::NatsOptions {
                    ack_wait: args.nats_ack_wait.max(Duration::from_secs(1)),
                    ..Default::default()
                },
            ),
        });
    }
    let source = source.map_err(Failure::usage)?;
    let token = source.load().map_err(Failure::usage)?;
    let sub = token_subject(&token).ok_or_else(|| {
        Failure::usage(format!("the token from {} is not a JWT", source.describe()))
    })?;
    let config = HttpBrokerConfig::from_env(&args.events_url, source).map_err(Failure::usage)?;
    let broker = HttpBroker::new(config).map_err(Failure::error)?;
    Ok(BusConnection {
        identity: BusIdentity::service(sub),
        target: Target::Http(Arc::new(broker)),
    })
}

pub use crate::runtime::liveness::hostname;

/// Starts the probe server when `--addr` is set; logs the bound address.
pub fn serve_probes(
    addr: Option<&str>,
    broker: SharedBroker,
    metrics: Metrics,
    what: &str,
) -> Result<(), Failure> {
    let Some(addr) = addr else {
        tracing::info!("{what} ready");
        return Ok(());
    };
    let listener = server::listen(addr)?;
    let bound = server::local_addr(&listener);
    let probes = Probes {
        ready: Arc::new(move || broker.ready().map_err(|e| e.to_string())),
        metrics,
    };
    let srv = server::start_probes(listener, probes)?;
    actix_rt::spawn(srv);
    tracing::info!(addr = %bound, "{what} ready");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
    }
}
