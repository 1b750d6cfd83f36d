//! The Events API (`spec/events-api.md`): `POST /api/v1/events` and the
//! NDJSON stream `GET /api/v1/events/stream`.

use super::body::{parse_json, query_bool, query_map, read_limited};
use super::idempotency::RecentPublishes;
use super::ndjson::with_heartbeats;
use super::peer::departure;
use super::ApiError;
use crate::auth::{Acl, Identity, Verifier};
use crate::broker::{Delivery, SharedBroker, SubscribeSpec};
use crate::contract::{validate_name, Envelope, Publication, IDEMPOTENCY_KEY, MAX_PAYLOAD_HEADER};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use std::time::Duration;

/// Default heartbeat interval on streams.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Default body limit of a publish (the payload limit).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What the Events API needs.
#[derive(Clone)]
pub struct EventsApi {
    pub broker: SharedBroker,
    pub verifier: Verifier,
    pub acl: Acl,
    pub heartbeat: Duration,
    pub max_payload: usize,
    /// Caps on open streams, per identity and in total.
    pub streams: super::stream_slots::StreamSlots,
}

/// Verifies the bearer token of `req`.
/// Two `Authorization` headers are a bad request: which one a proxy and
/// this server each read could differ.
pub fn bearer_identity(req: &HttpRequest, verifier: &Verifier) -> Result<Identity, ApiError> {
    let mut headers = req
        .headers()
        .get_all(actix_web::http::header::AUTHORIZATION);
    let header = headers.next().map(|v| v.to_str().unwrap_or("\u{0}"));
    if headers.next().is_some() {
        return Err(ApiError::bad_request(
            "more than one Authorization header: send exactly one",
        ));
    }
    Ok(verifier.verify_header(header)?)
}

async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<EventsApi>,
    recent: Option<web::Data<RecentPublishes>>,
) -> Result<HttpResponse, ApiError> {
    let who = bearer_identity(&req, &api.verifier)?;
    let body = read_limited(&req, payload, api.max_payload).await?;
    let publication: Publication = parse_json(&body)?;
    validate_name(&publication.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    api.acl
        .may_publish(&who, &publication.name)
        .map_err(ApiError::forbidden)?;
    let envelope = Envelope::stamp(publication, &who.sub, who.is_service());
    let name = envelope.name.clone();
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned);
    if let (Some(key), Some(recent)) = (&key, &recent) {
        if let Some(id) = recent.first(&who.sub, key, &envelope.id) {
            return Ok(HttpResponse::Accepted()
                .insert_header((MAX_PAYLOAD_HEADER, api.max_payload.to_string()))
                .json(serde_json::json!({"accepted": true, "id": id, "name": name})));
        }
    }
    let id = match api.broker.publish(envelope).await {
        Ok(id) => id,
        Err(e) => {
            if let (Some(key), Some(recent)) = (&key, &recent) {
                recent.forget(&who.sub, key);
            }
            return Err(e.into());
        }
    };
    Ok(HttpResponse::Accepted()
        .insert_header((MAX_PAYLOAD_HEADER, api.max_payload.to_string()))
        .json(serde_json::json!({"accepted": true, "id": id, "name": name})))
}

async fn stream(req: HttpRequest, api: web::Data<EventsApi>) -> Result<HttpResponse, ApiError> {
    let who = bearer_identity(&req, &api.verifier)?;
    let query = query_map(&req)?;
    let name = query
        .get("name")
        .ok_or_else(|| ApiError::bad_request("query parameter name is required"))?
        .clone();
    validate_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    api.acl
        .may_listen(&who, &name)
        .map_err(ApiError::forbidden)?;
    let group = query
        .get("group")
        .cloned()
        .unwrap_or_else(|| "default".into());
    let delivery = match query.get("delivery").map(String::as_str) {
        None | Some("broadcast") => Delivery::Broadcast,
        Some("unicast") => Delivery::Unicast { group },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "delivery must be broadcast or unicast, not {other:?}"
            )))
        }
    };
    let spec = SubscribeSpec {
        identity: (!api.acl.sees_all_identities(&who, &name)).then(|| who.sub.clone()),
        consumer: query
            .get("consumer")
            .cloned()
            .unwrap_or_else(|| "default".into()),
        replay: query_bool(&query, "replay", false)?,
        follow: query_bool(&query, "follow", true)?,
        delivery,
        name,
    };
    let slot = api.streams.take(&who.sub)?;
    let events = api.broker.subscribe(spec).await?;
    // The stream (and its subscription) ends the moment its client goes.
    let departed = departure(&req);
    let lines = events
        .take_until(departed)
        .take_while(|item| {
            if let Err(e) = item {
                tracing::warn!(error = %e, "events stream ended");
            }
            futures::future::ready(item.is_ok())
        })
        .filter_map(|item| {
            futures::future::ready(item.ok().map(|event| {
                if let Some(ack) = event.ack() {
                    // A durable delivery (a NATS work queue) handed to an
                    // HTTP stream is at most once, like every stream.
                    let done = ack.done();
                    actix_rt::spawn(async move {
                        if let Err(e) = done.await {
                            tracing::warn!(error = %e, "could not acknowledge a durable event");
                        }
                    });
                }
                event.line().clone()
            }))
        })
        .boxed_local();
    let body = super::stream_slots::holding(slot, with_heartbeats(lines, api.heartbeat));
    Ok(HttpResponse::Ok()
        .insert_header((MAX_PAYLOAD_HEADER, api.max_payload.to_string()))
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Mounts the Events API routes.
pub fn configure(cfg: &mut web::ServiceConfig, api: EventsApi) {
    use super::error::not_allowed;
    cfg.app_data(web::Data::new(api))
        .service(
            web::resource("/api/v1/events")
                .route(web::post().to(publish))
                .default_service(not_allowed("POST")),
        )
        .service(
            web::resource("/api/v1/events/stream")
                .route(web::get().to(stream))
                .default_service(not_allowed("GET")),
        );
}
