//! `bus bench router`: the routed round trip (requester → router → worker
//! → router → requester) beside a direct request/reply to the worker,
//! measured in the same run, on the memory broker and through the HTTP
//! Events API on loopback.

use super::responder::Responder;
use super::stats::{print_table, Summary};
use crate::actors::bus::dispatcher::ReplyMetrics;
use crate::actors::bus::requester::{BusIdentity, Request, Requester};
use crate::actors::router::{Router, RouterBackend, RouterConfig, RouterMetrics};
use crate::auth::{issue_token, Acl, IssueRequest, Secrets, Verifier, AUDIENCE_API};
use crate::broker::http::{HttpBroker, HttpBrokerConfig};
use crate::broker::memory::{HubConfig, MemoryBroker};
use crate::broker::SharedBroker;
use crate::cli::failure::Failure;
use crate::contract::{Kind, PUBLIC_PREFIX};
use crate::credentials::{Token, TokenSource};
use crate::http::events::EventsApi;
use crate::http::probes::Probes;
use crate::http::server;
use crate::metrics::{BusMetrics, Metrics};
use clap::Args;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct RouterBenchArgs {
    /// Sequential round trips per path (latency).
    #[arg(long, default_value_t = 1000)]
    pub latency_samples: usize,
    /// Requests for the throughput figure.
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    /// Requests in flight for the throughput figure.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// Latency (sequential) and throughput (`concurrency` lanes) of one
/// request kind; every reply must be a success.
pub(super) async fn measure(
    label: &str,
    requester: &Requester,
    name: &str,
    payload: serde_json::Value,
    args: &RouterBenchArgs,
) -> Result<Summary, Failure> {
    let one = |payload: serde_json::Value| async move {
        let out = requester
            .request(Request::new(name, payload, Duration::from_secs(10)))
            .await
            .map_err(|e| Failure::error(format!("{label}: {e}")))?;
        match out.replies.first() {
            Some(r) if r.payload.get("error").is_none() => Ok(()),
            Some(r) => Err(Failure::error(format!("{label}: {}", r.payload))),
            None => Err(Failure::error(format!("{label}: no reply"))),
        }
    };
    for _ in 0..50 {
        one(payload.clone()).await?; // warm up
    }
    let mut samples = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let t0 = Instant::now();
        one(payload.clone()).await?;
        samples.push(t0.elapsed());
    }
    let t0 = Instant::now();
    let per = args.requests.div_ceil(args.concurrency.max(1));
    let lanes = futures::future::join_all((0..args.concurrency.max(1)).map(|_| {
        let payload = payload.clone();
        let one = &one;
        async move {
            for _ in 0..per {
                one(payload.clone()).await?;
            }
            Ok::<usize, Failure>(per)
        }
    }))
    .await;
    let mut done = 0;
    for lane in lanes {
        done += lane?;
    }
    Ok(Summary::new(
        label,
        samples,
        done as f64 / t0.elapsed().as_secs_f64(),
    ))
}

async fn paths(
    kind: &str,
    broker: SharedBroker,
    args: &RouterBenchArgs,
) -> Result<Vec<Summary>, Failure> {
    let metrics = Metrics::new();
    Responder::start(broker.clone(), "bus.docker").await?;
    Router::start(
        broker.clone(),
        BusIdentity::service("bench-router"),
        RouterConfig::new(RouterBackend::Events {
            prefix: "bus.docker".into(),
        }),
        RouterMetrics::register(&metrics),
    )
    .await?;
    let requester = Requester::new(
        broker,
        BusIdentity::service("bench"),
        ReplyMetrics::register(&metrics, "bench"),
    );
    let payload = json!({"owner_account_id": "bench", "command": ["printf", "OK"]});
    let direct = measure(
        &format!("{kind}: direct to the worker"),
        &requester,
        &Kind::Run.request("bus.docker"),
        payload.clone(),
        args,
    )
    .await?;
    let routed = measure(
        &format!("{kind}: through the router"),
        &requester,
        &Kind::Run.request(PUBLIC_PREFIX),
        payload,
        args,
    )
    .await?;
    Ok(vec![direct, routed])
}

pub fn run(args: RouterBenchArgs) -> Result<(), Failure> {
    actix_rt::System::new().block_on(async move {
        let memory: SharedBroker = Arc::new(MemoryBroker::start(
            HubConfig::default(),
            BusMetrics::register(&Metrics::new()),
        ));
        let in_process = paths("memory broker", memory, &args).await?;

        let secret = uuid::Uuid::new_v4().to_string().into_bytes();
        let metrics = Metrics::new();
        let listener = server::listen("127.0.0.1:0")?;
        let addr = server::local_addr(&listener);
        let api = EventsApi {
            broker: Arc::new(MemoryBroker::start(
                HubConfig::default(),
                BusMetrics::register(&metrics),
            )),
            verifier: Verifier::new(&Secrets::new(secret.clone(), None), AUDIENCE_API),
            acl: Acl::default(),
            heartbeat: Duration::from_secs(15),
            max_payload: 1 << 20,
            streams: Default::default(),
        };
        let srv = server::start_events(
            listener,
            api,
            Probes {
                ready: Arc::new(|| Ok(())),
                metrics,
            },
            1,
        )?;
        let handle = srv.handle();
        actix_rt::spawn(srv);
        let request = IssueRequest {
            subject: "bench".into(),
            audience: AUDIENCE_API.into(),
            scopes: vec!["container:admin".into()],
            ttl: Duration::from_secs(3600),
        };
        let (token, _) = issue_token(&secret, &request).map_err(Failure::error)?;
        let source = TokenSource::Env {
            var: "bench".into(),
            token: Token::new(token),
        };
        let config = HttpBrokerConfig::from_env(&format!("http://{addr}"), source)
            .map_err(Failure::error)?;
        let http: SharedBroker = Arc::new(HttpBroker::new(config).map_err(Failure::error)?);
        let over_http = paths("HTTP Events API", http, &args).await?;
        handle.stop(false).await;

        print_table(
            "request → reply, memory broker (baseline: direct)",
            &in_process,
        );
        print_table(
            "request → reply, HTTP Events API on loopback (baseline: direct)",
            &over_http,
        );
        if args.json {
            let all: Vec<_> = in_process.iter().chain(&over_http).collect();
            println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        }
        Ok(())
    })
}
