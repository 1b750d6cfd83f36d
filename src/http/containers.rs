//! The containers REST API (`spec/containers-api.md`). Each handler
//! authenticates (audience and scope), parses strictly, and sends one
//! message to the [`ApiProvider`], whose answer or [`ProviderError`]
//! becomes the response; the provider does the work.
//!
//! [`ProviderError`]: crate::actors::api_provider::ProviderError

use super::body::{
    query_bool, query_map, read_limited, require_json, run_body, strict_object, InputBody,
};
use super::events::bearer_identity;
use super::ndjson::{line, with_heartbeats};
use super::ApiError;
use crate::actors::api_provider::messages::{
    CreateRun, Created, DeleteRun, FollowLogs, GetArtifacts, GetRun, ListRuns, LogChunk, LogItem,
    RunnerDelete, RunnerStart, RunnerStatus, SendInput, Status, WaitRun, Waited,
};
use crate::actors::api_provider::{ApiProvider, ProviderError};
use crate::auth::{scopes, Identity, Verifier};
use crate::contract::run::valid_run_id;
use crate::contract::{encode, Reply, RunResult};
use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

/// The OpenAPI document of this API (also in the repository).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// What the containers API needs.
#[derive(Clone)]
pub struct ContainersApi {
    pub provider: Addr<ApiProvider>,
    /// Audience `ai.hg.fi/api`.
    pub public: Verifier,
    /// Audience `ai.hg.fi/internal`.
    pub internal: Verifier,
    pub max_body: usize,
    pub heartbeat: Duration,
    /// The longest `GET .../wait` (`--request-timeout`).
    pub wait_cap: Duration,
    /// Caps on open log follows, per identity and in total.
    pub streams: super::stream_slots::StreamSlots,
}

fn caller(req: &HttpRequest, api: &ContainersApi, scope: &str) -> Result<Identity, ApiError> {
    let who = bearer_identity(req, &api.public)?;
    if !who.has_scope(scope) {
        return Err(ApiError::forbidden(format!("scope {scope} is required")));
    }
    Ok(who)
}

fn operator(req: &HttpRequest, api: &ContainersApi) -> Result<Identity, ApiError> {
    let who = bearer_identity(req, &api.internal)?;
    if !who.has_scope(scopes::CONTAINER_ADMIN) {
        return Err(ApiError::forbidden("scope container:admin is required"));
    }
    Ok(who)
}

fn run_id(req: &HttpRequest) -> String {
    req.match_info()
        .get("run_id")
        .unwrap_or_default()
        .to_owned()
}

/// A run's HTTP answer from its result.
fn answer(result: Reply<RunResult>) -> Result<HttpResponse, ApiError> {
    match result {
        Reply::Ok(r) => Ok(HttpResponse::Ok().json(r)),
        Reply::Err(e) => Err(ProviderError::Refused(e).into()),
    }
}

async fn status(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let view = api.provider.send(Status { owner: who.sub }).await??;
    Ok(HttpResponse::Ok().json(view))
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_RUN)?;
    require_json(&req)?;
    let body = run_body(&read_limited(&req, payload, api.max_body).await?)?;
    let created = CreateRun {
        owner: who.sub,
        spec: body.spec,
        wait: body.wait,
    };
    match api.provider.send(created).await?? {
        Created::Done(result) => Ok(HttpResponse::Ok().json(result)),
        Created::Accepted(run_id) => {
            Ok(HttpResponse::Accepted().json(json!({"run_id": run_id, "state": "running"})))
        }
    }
}

async fn list(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let q = query_map(&req)?;
    let limit = match q.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be a whole number from 1 to 1000"))?,
    };
    let before = q.get("before").cloned();
    if before.as_deref().is_some_and(|b| !valid_run_id(b)) {
        return Err(ApiError::bad_request("before must be a run id"));
    }
    let page = api
        .provider
        .send(ListRuns {
            owner: who.sub,
            limit,
            before,
        })
        .await??;
    Ok(HttpResponse::Ok().json(page))
}

async fn get_run(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let view = api
        .provider
        .send(GetRun {
            run_id: run_id(&req),
            owner: who.sub,
        })
        .await??;
    Ok(HttpResponse::Ok().json(view))
}

/// The run's artifact archive (`application/x-tar`), its owner's only.
async fn artifacts(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let run_id = run_id(&req);
    let tar = api
        .provider
        .send(GetArtifacts {
            run_id: run_id.clone(),
            owner: who.sub,
        })
        .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/x-tar")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{run_id}-artifacts.tar\""),
        ))
        .body(tar))
}

async fn delete_run(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_DELETE)?;
    let deleted = api
        .provider
        .send(DeleteRun {
            run_id: run_id(&req),
            owner: who.sub,
        })
        .await??;
    Ok(HttpResponse::Ok().json(deleted))
}

async fn wait(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let q = query_map(&req)?;
    let timeout = match q.get("timeout") {
        None => api.wait_cap,
        Some(t) => crate::parse::parse_duration_capped(t, api.wait_cap)
            .map_err(|e| ApiError::bad_request(format!("timeout: {e}")))?,
    };
    let id = run_id(&req);
    let waited = WaitRun {
        run_id: id.clone(),
        owner: who.sub,
        timeout,
    };
    match api.provider.send(waited).await?? {
        Waited::Done(result) => answer(result),
        Waited::StillRunning => {
            Ok(HttpResponse::Accepted().json(json!({"run_id": id, "state": "running"})))
        }
    }
}

fn chunk_line(c: &LogChunk) -> bytes::Bytes {
    line(&encode(c))
}

fn exit_line(result: &Reply<RunResult>) -> bytes::Bytes {
    line(&json!({ "exit": result }))
}

/// What a log stream has sent of each output stream.
#[derive(Default)]
struct Streamed {
    bytes: [usize; 2],
    next_seq: u64,
}

impl Streamed {
    fn count(&mut self, c: &LogChunk) {
        self.bytes[c.stream.index()] += c.output_len();
        self.next_seq = self.next_seq.max(c.seq + 1);
    }

    /// The part of the result's output past what was sent (by bytes of
    /// output: for a base64 run, of the decoded output).
    fn rest_of(&mut self, result: &Reply<RunResult>) -> Vec<LogChunk> {
        let Reply::Ok(r) = result else {
            return Vec::new();
        };
        let base64 = crate::actors::api_provider::logs::base64(r);
        let mut out = Vec::new();
        for (stream, text) in [
            (crate::contract::OutputStream::Stdout, &r.stdout),
            (crate::contract::OutputStream::Stderr, &r.stderr),
        ] {
            let sent = self.bytes[stream.index()];
            let rest = if base64 {
                crate::contract::bytes::base64_decode("output", text)
                    .ok()
                    .and_then(|b| b.get(sent..).map(crate::contract::bytes::base64_encode))
            } else {
                text.get(sent..).map(str::to_owned)
            };
            if let Some(rest) = rest.filter(|r| !r.is_empty()) {
                out.push(LogChunk::new(self.next_seq, stream, rest, base64));
                self.next_seq += 1;
            }
        }
        out
    }
}

async fn logs(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let q = query_map(&req)?;
    let follow = query_bool(&q, "follow", false)?;
    let slot = follow.then(|| api.streams.take(&who.sub)).transpose()?;
    let feed = api
        .provider
        .send(FollowLogs {
            run_id: run_id(&req),
            owner: who.sub,
            follow,
        })
        .await??;
    let mut sent = Streamed::default();
    feed.so_far.iter().for_each(|c| sent.count(c));
    let head = futures::stream::iter(feed.so_far.iter().map(chunk_line).collect::<Vec<_>>());
    let lines: futures::stream::LocalBoxStream<'static, bytes::Bytes> = match feed.rest {
        None => head.boxed_local(),
        Some(rx) => {
            let tail = tokio_stream::wrappers::ReceiverStream::new(rx)
                .scan((false, sent), move |(ended, sent), item| {
                    if *ended {
                        return futures::future::ready(None);
                    }
                    let out = match item {
                        LogItem::Chunk(c) => {
                            sent.count(&c);
                            vec![chunk_line(&c)]
                        }
                        LogItem::Exit(result) => {
                            *ended = true;
                            // Output the events did not carry (a backend that
                            // streams none, or events dropped under load)
                            // comes from the result, then the exit line.
                            let mut lines: Vec<bytes::Bytes> =
                                sent.rest_of(&result).iter().map(chunk_line).collect();
                            lines.push(exit_line(&result));
                            lines
                        }
                    };
                    futures::future::ready(Some(futures::stream::iter(out)))
                })
                .flatten();
            head.chain(tail).boxed_local()
        }
    };
    // A follow (and its slot) ends the moment its client goes.
    let lines = lines.take_until(super::peer::departure(&req)).boxed_local();
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(super::stream_slots::holding(
            slot,
            with_heartbeats(lines, api.heartbeat),
        )))
}

async fn input(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_RUN)?;
    require_json(&req)?;
    let body: InputBody = strict_object(&read_limited(&req, payload, api.max_body).await?)?;
    let accepted = api
        .provider
        .send(SendInput {
            run_id: run_id(&req),
            owner: who.sub,
            data: body.bytes()?,
            eof: body.eof,
        })
        .await??;
    Ok(HttpResponse::Ok().json(accepted))
}

async fn runner_get(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    Ok(HttpResponse::Ok().json(api.provider.send(RunnerStatus).await??))
}

async fn runner_start(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    let started = api.provider.send(RunnerStart).await??;
    Ok(HttpResponse::Accepted().json(json!({"accepted": started.accepted, "action": "start"})))
}

async fn runner_delete(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    api.provider.send(RunnerDelete).await??;
    Ok(HttpResponse::Ok().json(json!({"deleted": true})))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Mounts the containers API.
pub fn configure(cfg: &mut web::ServiceConfig, api: ContainersApi) {
    use super::error::not_allowed;
    cfg.app_data(web::Data::new(api))
        .service(
            web::resource("/api/v1/containers/status")
                .route(web::get().to(status))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/api/v1/containers/openapi.json")
                .route(web::get().to(openapi))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/api/v1/containers/runs")
                .route(web::get().to(list))
                .route(web::post().to(create))
                .default_service(not_allowed("GET, POST")),
        )
        .service(
            web::resource("/api/v1/containers/runs/{run_id}")
                .route(web::get().to(get_run))
                .route(web::delete().to(delete_run))
                .default_service(not_allowed("GET, DELETE")),
        )
        .service(
            web::resource("/api/v1/containers/runs/{run_id}/wait")
                .route(web::get().to(wait))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/api/v1/containers/runs/{run_id}/logs")
                .route(web::get().to(logs))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/api/v1/containers/runs/{run_id}/artifacts")
                .route(web::get().to(artifacts))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/api/v1/containers/runs/{run_id}/input")
                .route(web::post().to(input))
                .default_service(not_allowed("POST")),
        )
        .service(
            web::resource("/api/internal/containers/runner")
                .route(web::get().to(runner_get))
                .route(web::post().to(runner_start))
                .route(web::delete().to(runner_delete))
                .default_service(not_allowed("GET, POST, DELETE")),
        );
}

#[cfg(test)]
mod streamed_tests {
    use super::Streamed;
    use crate::actors::api_provider::messages::LogChunk;
    use crate::contract::{OutputStream, Reply, RunResult};

    fn chunk(seq: u64, stream: OutputStream, data: &str) -> LogChunk {
        LogChunk::new(seq, stream, data.into(), false)
    }

    #[test]
    fn the_result_fills_in_what_the_events_did_not_carry() {
        use OutputStream::{Stderr, Stdout};
        let result = Reply::Ok(RunResult {
            stdout: "hello world".into(),
            stderr: "oops".into(),
            ..Default::default()
        });
        // No events at all (a backend that streams none): all of it.
        let rest = Streamed::default().rest_of(&result);
        assert_eq!(
            rest,
            vec![chunk(0, Stdout, "hello world"), chunk(1, Stderr, "oops")]
        );
        // Some events: only the remainder, numbered after them.
        let mut sent = Streamed::default();
        sent.count(&chunk(0, Stdout, "hello"));
        sent.count(&chunk(1, Stderr, "oops"));
        assert_eq!(sent.rest_of(&result), vec![chunk(2, Stdout, " world")]);
        // Everything came as events: nothing more.
        let mut all = Streamed::default();
        all.count(&chunk(0, Stdout, "hello world"));
        all.count(&chunk(1, Stderr, "oops"));
        assert!(all.rest_of(&result).is_empty());
        // Base64 output: counted by decoded bytes, the rest re-encoded.
        let b64 = crate::contract::bytes::base64_encode;
        let result = Reply::Ok(RunResult {
            stdout: b64(b"\x00\xffhello"),
            output_encoding: Some(crate::contract::OutputEncoding::Base64),
            ..Default::default()
        });
        let mut sent = Streamed::default();
        sent.count(&LogChunk::new(0, Stdout, b64(b"\x00\xff"), true));
        assert_eq!(
            sent.rest_of(&result),
            vec![LogChunk::new(1, Stdout, b64(b"hello"), true)]
        );
    }
}
