//! The containers REST API (`spec/containers-api.md`): authentication per
//! audience and scope, strict bodies and queries, account isolation. The
//! work itself is the [`Provider`]'s.

use super::body::{query_bool, query_map, read_limited};
use super::events::bearer_identity;
use super::ndjson::{line, with_heartbeats};
use super::ApiError;
use crate::actors::live_runs::{chunks_of_result, exit_line, Follow, LogItem};
use crate::auth::{scopes, Identity, Verifier};
use crate::contract::Kind;
use crate::contract::RunState;
use crate::provider::body::{strict_object, CreateRun, Input};
use crate::provider::{valid_run_id, Created, Provider};
use crate::store::RunRecord;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

/// The OpenAPI document of this API (also in the repository).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// What the containers API needs.
#[derive(Clone)]
pub struct ContainersApi {
    pub provider: Provider,
    /// Audience `ai.hg.fi/api`.
    pub public: Verifier,
    /// Audience `ai.hg.fi/internal`.
    pub internal: Verifier,
    pub max_body: usize,
    pub heartbeat: Duration,
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

fn record_json(r: &RunRecord) -> Value {
    json!({
        "run_id": r.run_id,
        "owner_account_id": r.owner_account_id,
        "state": r.state,
        "worker_id": r.worker_id,
        "profile": r.profile,
        "image": r.image,
        "args": r.args,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "result": r.result,
    })
}

fn summary_json(r: &RunRecord) -> Value {
    json!({
        "run_id": r.run_id,
        "state": r.state,
        "worker_id": r.worker_id,
        "profile": r.profile,
        "image": r.image,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "exit_code": r.result.as_ref().and_then(|v| v.get("exit_code")).cloned().unwrap_or(Value::Null),
    })
}

async fn status(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    Ok(HttpResponse::Ok().json(api.provider.status(&who.sub).await?))
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_RUN)?;
    let body = read_limited(&req, payload, api.max_body).await?;
    let run: CreateRun = strict_object(&body)?;
    match api.provider.create(&who.sub, run).await? {
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
        .store
        .list(&who.sub, limit, before)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let items: Vec<Value> = page.items.iter().map(summary_json).collect();
    let mut out = json!({ "items": items });
    if let Some(next) = page.next {
        out["next"] = json!(next);
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn get_run(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let record = api.provider.owned(&run_id(&req), &who.sub).await?;
    Ok(HttpResponse::Ok().json(record_json(&record)))
}

async fn delete_run(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_DELETE)?;
    Ok(HttpResponse::Ok().json(api.provider.delete(&run_id(&req), &who.sub).await?))
}

async fn wait(req: HttpRequest, api: web::Data<ContainersApi>) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_READ)?;
    let q = query_map(&req)?;
    let cap = api.provider.config.request_timeout;
    let timeout = match q.get("timeout") {
        None => cap,
        Some(t) => crate::parse::parse_duration_capped(t, cap)
            .map_err(|e| ApiError::bad_request(format!("timeout: {e}")))?,
    };
    let id = run_id(&req);
    match api.provider.wait(&id, &who.sub, timeout).await? {
        Some(result) => Ok(HttpResponse::Ok().json(crate::provider::answer_of(&result)?)),
        None => Ok(HttpResponse::Accepted().json(json!({"run_id": id, "state": "running"}))),
    }
}

/// The log lines of a finished run: its output, then its exit line.
fn finished_lines(result: &Value) -> Vec<bytes::Bytes> {
    let mut out: Vec<bytes::Bytes> = chunks_of_result(result)
        .iter()
        .map(|c| line(&serde_json::to_value(c).unwrap_or_default()))
        .collect();
    out.push(line(&exit_line(result)));
    out
}

/// What a log stream has sent of each output stream.
#[derive(Default)]
struct Streamed {
    bytes: [usize; 2],
    next_seq: u64,
}

impl Streamed {
    fn count(&mut self, c: &crate::actors::live_runs::LogChunk) {
        let i = usize::from(c.stream == "stderr");
        self.bytes[i] += c.data.len();
        self.next_seq = self.next_seq.max(c.seq + 1);
    }

    /// The part of the result's output past what was sent.
    fn rest_of(&mut self, result: &Value) -> Vec<crate::actors::live_runs::LogChunk> {
        let mut out = Vec::new();
        for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
            let text = result.get(stream).and_then(Value::as_str).unwrap_or("");
            if let Some(rest) = text.get(self.bytes[i]..).filter(|r| !r.is_empty()) {
                out.push(crate::actors::live_runs::LogChunk {
                    seq: self.next_seq,
                    stream: stream.into(),
                    data: rest.to_owned(),
                });
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
    let id = run_id(&req);
    let record = api.provider.owned(&id, &who.sub).await?;
    let live = api
        .provider
        .live
        .send(Follow {
            run_id: id.clone(),
            follow,
        })
        .await
        .ok()
        .flatten();
    let chunk_line =
        |c: &crate::actors::live_runs::LogChunk| line(&serde_json::to_value(c).unwrap_or_default());
    let lines: futures::stream::LocalBoxStream<'static, bytes::Bytes> = match (live, record.state) {
        (Some((so_far, rx)), _) => {
            let head = futures::stream::iter(so_far.iter().map(chunk_line).collect::<Vec<_>>());
            match rx {
                None => head.boxed_local(),
                Some(rx) => {
                    let mut sent = Streamed::default();
                    so_far.iter().for_each(|c| sent.count(c));
                    let tail = tokio_stream::wrappers::ReceiverStream::new(rx)
                        .scan((false, sent), move |(ended, sent), item| {
                            if *ended {
                                return futures::future::ready(None);
                            }
                            let out = match item {
                                LogItem::Chunk(c) => {
                                    sent.count(&c);
                                    vec![line(&serde_json::to_value(c).unwrap_or_default())]
                                }
                                LogItem::Exit(result) => {
                                    *ended = true;
                                    // Output the events did not carry (a backend that
                                    // streams none, or events dropped under load)
                                    // comes from the result, then the exit line.
                                    let mut lines: Vec<bytes::Bytes> =
                                        sent.rest_of(&result).iter().map(chunk_line).collect();
                                    lines.push(line(&exit_line(&result)));
                                    lines
                                }
                            };
                            futures::future::ready(Some(futures::stream::iter(out)))
                        })
                        .flatten();
                    head.chain(tail).boxed_local()
                }
            }
        }
        (None, RunState::Running) if follow => {
            // Running on another instance: watch the ledger for its end.
            let provider = api.provider.clone();
            futures::stream::once(async move {
                loop {
                    actix_rt::time::sleep(Duration::from_millis(500)).await;
                    match provider.store.get(&id).await {
                        Ok(Some(r)) if r.state != RunState::Running => {
                            break r.result.unwrap_or(Value::Null)
                        }
                        Ok(None) => break json!({"run_id": id, "state": "cancelled"}),
                        _ => {}
                    }
                }
            })
            .flat_map(|result| futures::stream::iter(finished_lines(&result)))
            .boxed_local()
        }
        (None, RunState::Running) => futures::stream::empty().boxed_local(),
        (None, _) => {
            let result = record.result.clone().unwrap_or(Value::Null);
            futures::stream::iter(finished_lines(&result)).boxed_local()
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(with_heartbeats(lines, api.heartbeat)))
}

async fn input(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&req, &api, scopes::CONTAINER_RUN)?;
    let body = read_limited(&req, payload, api.max_body).await?;
    let input: Input = strict_object(&body)?;
    Ok(HttpResponse::Ok().json(api.provider.input(&run_id(&req), &who.sub, input).await?))
}

async fn runner_get(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    Ok(HttpResponse::Ok().json(api.provider.runner(Kind::RunnerStatus).await?))
}

async fn runner_start(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    let mut v = api.provider.runner(Kind::RunnerStart).await?;
    v = json!({"accepted": v.get("accepted").cloned().unwrap_or(json!(true)), "action": "start"});
    Ok(HttpResponse::Accepted().json(v))
}

async fn runner_delete(
    req: HttpRequest,
    api: web::Data<ContainersApi>,
) -> Result<HttpResponse, ApiError> {
    operator(&req, &api)?;
    api.provider.runner(Kind::RunnerDelete).await?;
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
    use crate::actors::live_runs::LogChunk;
    use serde_json::json;

    fn chunk(seq: u64, stream: &str, data: &str) -> LogChunk {
        LogChunk {
            seq,
            stream: stream.into(),
            data: data.into(),
        }
    }

    #[test]
    fn the_result_fills_in_what_the_events_did_not_carry() {
        let result = json!({"stdout": "hello world", "stderr": "oops"});
        // No events at all (a backend that streams none): all of it.
        let rest = Streamed::default().rest_of(&result);
        assert_eq!(
            rest,
            vec![
                chunk(0, "stdout", "hello world"),
                chunk(1, "stderr", "oops")
            ]
        );
        // Some events: only the remainder, numbered after them.
        let mut sent = Streamed::default();
        sent.count(&chunk(0, "stdout", "hello"));
        sent.count(&chunk(1, "stderr", "oops"));
        assert_eq!(sent.rest_of(&result), vec![chunk(2, "stdout", " world")]);
        // Everything came as events: nothing more.
        let mut all = Streamed::default();
        all.count(&chunk(0, "stdout", "hello world"));
        all.count(&chunk(1, "stderr", "oops"));
        assert!(all.rest_of(&result).is_empty());
    }
}
