//! `bus api-provider events`: the Events API server.

use super::failure::Failure;
use crate::auth::{Acl, Secrets, Verifier, AUDIENCE_API};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::broker::nats::{NatsBroker, NatsOptions};
use crate::broker::SharedBroker;
use crate::http::events::{EventsApi, MAX_PAYLOAD};
use crate::http::probes::Probes;
use crate::http::server;
use crate::http::stream_slots::StreamSlots;
use crate::metrics::{BusMetrics, Metrics};
use crate::parse::parse_duration;
use clap::{Args, ValueEnum};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum EventsBackend {
    /// The embedded in-memory broker.
    #[default]
    Memory,
    /// A NATS server (--nats-url): HTTP clients and NATS clients share one bus.
    Nats,
}

#[derive(Debug, Args)]
pub struct EventsServerArgs {
    /// Listen address.
    #[arg(long, env = "BUS_EVENTS_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// Broker backend.
    #[arg(long, value_enum, default_value_t)]
    pub events_backend: EventsBackend,
    /// The NATS server, with --events-backend nats.
    #[arg(long, env = "BUS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// More name prefixes that need container:admin (repeatable).
    #[arg(long = "protected-prefix")]
    pub protected_prefix: Vec<String>,
    /// Heartbeat interval on streams (Go duration).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Largest publish body in bytes.
    #[arg(long, default_value_t = MAX_PAYLOAD)]
    pub max_payload_bytes: usize,
    /// Events kept per name for replay (memory: per name in the hub;
    /// NATS: per subject in the JetStream replay stream).
    #[arg(long, default_value_t = HubConfig::default().replay_per_name)]
    pub replay_window: usize,
    /// Events queued per subscriber before it is cut off as too slow
    /// (memory backend).
    #[arg(long, default_value_t = HubConfig::default().queue_capacity)]
    pub queue_capacity: usize,
    /// Open event streams allowed in total; more are 429.
    #[arg(long, default_value_t = crate::http::stream_slots::MAX_STREAMS)]
    pub max_streams: usize,
    /// Open event streams allowed per token identity (sub); more are 429.
    #[arg(long, default_value_t = crate::http::stream_slots::MAX_STREAMS_PER_IDENTITY)]
    pub max_streams_per_identity: usize,
    /// HTTP worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

pub fn run(args: EventsServerArgs) -> Result<(), Failure> {
    let secrets = Secrets::from_env(
        &["BUS_API_JWT_SECRET", "BUS_EVENTS_JWT_SECRET"],
        "BUS_API_JWT_SECRET_PREVIOUS",
    )
    .map_err(Failure::usage)?;
    if args.max_streams == 0 || args.max_streams_per_identity == 0 {
        return Err(Failure::usage(
            "--max-streams and --max-streams-per-identity must be greater than zero",
        ));
    }
    if args.heartbeat.is_zero() {
        return Err(Failure::usage("--heartbeat must be greater than zero"));
    }
    let listener = server::listen(&args.addr)?;
    let addr = server::local_addr(&listener);
    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new();
        let hub = HubConfig {
            queue_capacity: args.queue_capacity.max(1),
            replay_per_name: args.replay_window,
            ..HubConfig::default()
        };
        let broker: SharedBroker = match args.events_backend {
            EventsBackend::Memory => {
                Arc::new(MemoryBroker::start(hub, BusMetrics::register(&metrics)))
            }
            EventsBackend::Nats => {
                let options = NatsOptions {
                    replay_per_name: args.replay_window as i64,
                    ..NatsOptions::default()
                };
                let nats = NatsBroker::connect(&args.nats_url, options).await?;
                tracing::info!(url = %args.nats_url, "events API on NATS");
                Arc::new(nats)
            }
        };
        let ready_broker = broker.clone();
        let probes = Probes {
            ready: Arc::new(move || ready_broker.ready().map_err(|e| e.to_string())),
            metrics,
        };
        let api = EventsApi {
            broker,
            verifier: Verifier::new(&secrets, AUDIENCE_API),
            acl: Acl::new(&args.protected_prefix),
            heartbeat: args.heartbeat,
            max_payload: args.max_payload_bytes,
            streams: StreamSlots::new(args.max_streams, args.max_streams_per_identity),
        };
        let workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        let server = server::start_events(listener, api, probes, workers)?;
        tracing::info!(%addr, backend = ?args.events_backend, "events API listening");
        let handle = server.handle();
        actix_rt::spawn(async move {
            super::process::stop_signal().await;
            handle.stop(true).await;
        });
        server.await.map_err(Failure::from)
    })
}
