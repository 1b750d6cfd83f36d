//! Binding and starting the actix-web servers of this process.

use super::{error::no_route, events, probes};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};

/// Binds `addr` (e.g. `127.0.0.1:0` in tests).
pub fn listen(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// The address a listener got.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// Starts the Events API with its probes on `listener`.
pub fn start_events(
    listener: TcpListener,
    api: events::EventsApi,
    probes: probes::Probes,
    workers: usize,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let (api, probes) = (api.clone(), probes.clone());
        App::new()
            .configure(|cfg| events::configure(cfg, api))
            .configure(|cfg| probes::configure(cfg, probes))
            .default_service(web::to(no_route))
    })
    .workers(workers.max(1))
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Starts only the probes (`--addr` of routers and workers).
pub fn start_probes(listener: TcpListener, probes: probes::Probes) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let probes = probes.clone();
        App::new()
            .configure(|cfg| probes::configure(cfg, probes))
            .default_service(web::to(no_route))
    })
    .workers(1)
    .shutdown_timeout(2)
    .listen(listener)?
    .run();
    Ok(server)
}
