//! `bus bench events`: publish→receive latency (p50/p99) and events/s,
//! through the in-process memory broker (the baseline) and through the
//! HTTP Events API on loopback, measured in one run.

use super::stats::{print_table, Summary};
use crate::auth::{issue_token, Acl, IssueRequest, Secrets, Verifier, AUDIENCE_API};
use crate::broker::http::{HttpBroker, HttpBrokerConfig};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::broker::{Broker, SharedBroker, SubscribeSpec};
use crate::cli::failure::Failure;
use crate::contract::{Envelope, Publication};
use crate::credentials::{Token, TokenSource};
use crate::http::events::EventsApi;
use crate::http::probes::Probes;
use crate::http::server;
use crate::metrics::{BusMetrics, Metrics};
use clap::Args;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct EventsBenchArgs {
    /// Sequential publish→receive round trips per path.
    #[arg(long, default_value_t = 2000)]
    pub latency_samples: usize,
    /// Events published for the throughput figure.
    #[arg(long, default_value_t = 20000)]
    pub events: usize,
    /// Publishers in flight at once for the throughput figure.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

fn envelope(i: usize) -> Envelope {
    Envelope::stamp(
        Publication::new("bench.events", serde_json::json!({ "i": i })),
        "bench",
        true,
    )
}

async fn measure(
    label: &str,
    broker: &dyn Broker,
    args: &EventsBenchArgs,
) -> Result<Summary, Failure> {
    // Latency: one event in flight at a time.
    let mut stream = broker
        .subscribe(SubscribeSpec::broadcast("bench.events"))
        .await?;
    let mut samples = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let t0 = Instant::now();
        broker.publish(envelope(i)).await?;
        match stream.next().await {
            Some(Ok(_)) => samples.push(t0.elapsed()),
            other => return Err(Failure::error(format!("{label}: stream ended: {other:?}"))),
        }
    }
    drop(stream);
    // Throughput: `concurrency` publishers, one subscriber counting.
    let mut stream = broker
        .subscribe(SubscribeSpec::broadcast("bench.events"))
        .await?;
    let total = args.events;
    let t0 = Instant::now();
    let receiver = async {
        let mut got = 0usize;
        while got < total {
            match stream.next().await {
                Some(Ok(_)) => got += 1,
                _ => break,
            }
        }
        got
    };
    let per = total.div_ceil(args.concurrency.max(1));
    let publishers = futures::future::join_all((0..args.concurrency.max(1)).map(|p| async move {
        for i in (p * per)..((p + 1) * per).min(total) {
            broker.publish(envelope(i)).await?;
        }
        Ok::<(), crate::broker::BrokerError>(())
    }));
    let (got, published) = futures::join!(receiver, publishers);
    let elapsed = t0.elapsed();
    for p in published {
        p?;
    }
    if got != total {
        return Err(Failure::error(format!(
            "{label}: received {got} of {total} events"
        )));
    }
    Ok(Summary::new(
        label,
        samples,
        total as f64 / elapsed.as_secs_f64(),
    ))
}

pub fn run(args: EventsBenchArgs) -> Result<(), Failure> {
    actix_rt::System::new().block_on(async move {
        // Queues large enough that the bench's own subscriber is never cut off.
        let hub = HubConfig {
            queue_capacity: args.events.max(1024) * 2,
            replay_per_name: 0,
            ..HubConfig::default()
        };
        let memory = MemoryBroker::start(hub.clone(), BusMetrics::register(&Metrics::new()));
        let in_process = measure("in-process memory broker", &memory, &args).await?;

        let secret = uuid::Uuid::new_v4().to_string().into_bytes();
        let metrics = Metrics::new();
        let server_broker: SharedBroker =
            Arc::new(MemoryBroker::start(hub, BusMetrics::register(&metrics)));
        let listener = server::listen("127.0.0.1:0")?;
        let addr = server::local_addr(&listener);
        let api = EventsApi {
            broker: server_broker,
            verifier: Verifier::new(&Secrets::new(secret.clone(), None), AUDIENCE_API),
            acl: Acl::default(),
            heartbeat: Duration::from_secs(15),
            max_payload: 1 << 20,
            streams: Default::default(),
        };
        let probes = Probes {
            ready: Arc::new(|| Ok(())),
            metrics,
        };
        let srv = server::start_events(listener, api, probes, 1)?;
        let handle = srv.handle();
        actix_rt::spawn(srv);
        let (token, _) = issue_token(
            &secret,
            &IssueRequest {
                subject: "bench".into(),
                audience: AUDIENCE_API.into(),
                scopes: vec!["events:admin".into()],
                ttl: Duration::from_secs(3600),
            },
        )
        .map_err(Failure::error)?;
        let mut config = HttpBrokerConfig::from_env(
            &format!("http://{addr}"),
            TokenSource::Env {
                var: "bench".into(),
                token: Token::new(token),
            },
        )
        .map_err(Failure::error)?;
        config.retry = None;
        let http = HttpBroker::new(config).map_err(Failure::error)?;
        let over_http = measure("HTTP Events API (loopback)", &http, &args).await?;
        handle.stop(false).await;

        let rows = [in_process, over_http];
        print_table("publish → receive", &rows);
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        }
        Ok(())
    })
}
