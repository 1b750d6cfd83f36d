//! `bus integration containers`: the router.

use super::failure::Failure;
use super::process::{connect, serve_probes, stop_signal, BusArgs};
use crate::actors::router::{Router, RouterBackend, RouterConfig, RouterMetrics, Shutdown};
use crate::contract::validate_name;
use crate::metrics::Metrics;
use crate::parse::parse_duration;
use clap::{Args, ValueEnum};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum RouterProvider {
    /// Answer every request with deterministic static replies.
    Static,
    /// Forward to the workers of --backend-event-prefix.
    #[default]
    Events,
}

#[derive(Debug, Args)]
pub struct RouterArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    #[arg(long, env = "BUS_CONTAINERS_PROVIDER", value_enum, default_value_t)]
    pub provider: RouterProvider,
    /// The workers' prefix.
    #[arg(
        long,
        env = "BUS_CONTAINERS_BACKEND_EVENT_PREFIX",
        default_value = "bus.docker"
    )]
    pub backend_event_prefix: String,
    /// Longest a run may wait for its reply (Go duration).
    #[arg(long, env = "BUS_CONTAINERS_REQUEST_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

pub fn run_router(args: RouterArgs) -> Result<(), Failure> {
    let prefix = args
        .backend_event_prefix
        .trim()
        .trim_end_matches('.')
        .to_owned();
    validate_name(&prefix).map_err(|e| Failure::usage(format!("--backend-event-prefix: {e}")))?;
    if prefix == crate::contract::PUBLIC_PREFIX {
        return Err(Failure::usage(
            "--backend-event-prefix must differ from bus.containers (the router would forward to itself)",
        ));
    }
    if args.request_timeout.is_zero() {
        return Err(Failure::usage(
            "--request-timeout must be greater than zero",
        ));
    }
    let bus = connect(&args.bus)?;
    let backend = match args.provider {
        RouterProvider::Static => RouterBackend::Static,
        RouterProvider::Events => RouterBackend::Events {
            prefix: prefix.clone(),
        },
    };
    let mut config = RouterConfig::new(backend);
    config.request_timeout = args.request_timeout;
    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new();
        let broker = bus.open().await?;
        let router = Router::start(
            broker.clone(),
            bus.identity.clone(),
            config,
            RouterMetrics::register(&metrics),
        )
        .await?;
        tracing::info!(provider = ?args.provider, prefix = %prefix, "router subscribed");
        serve_probes(args.bus.addr.as_deref(), broker, metrics, "router")?;
        stop_signal().await;
        let _ = router.send(Shutdown).await;
        Ok(())
    })
}
