//! Binding and starting the actix-web servers of this process.

use super::{error::no_route, events, probes};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};

/// Binds `addr` (e.g. `127.0.0.1:0` in tests) with `SO_REUSEADDR`, so a
/// restarted server gets its port back while old connections linger.
pub fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let fail =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let sock_addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            use std::net::ToSocketAddrs;
            addr.to_socket_addrs()
                .map_err(fail)?
                .next()
                .ok_or_else(|| {
                    fail(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "no address",
                    ))
                })?
        }
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sock_addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&sock_addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    Ok(socket.into())
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
    let recent = web::Data::new(super::idempotency::RecentPublishes::default());
    let server = HttpServer::new(move || {
        let (api, probes) = (api.clone(), probes.clone());
        App::new()
            .wrap(from_fn(super::limits::head))
            .app_data(recent.clone())
            .configure(|cfg| probes::configure(cfg, probes))
            .configure(|cfg| events::configure(cfg, api))
            .default_service(web::to(no_route))
    })
    .on_connect(super::peer::remember)
    .workers(workers.max(1))
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Starts only the probes (`--addr` of routers and workers).
pub fn start_probes(listener: TcpListener, probes: probes::Probes) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let probes = probes.clone();
        App::new()
            .wrap(from_fn(super::limits::head))
            .configure(|cfg| probes::configure(cfg, probes))
            .default_service(web::to(no_route))
    })
    .workers(1)
    .shutdown_timeout(2)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Starts the containers API with its probes and request metrics.
pub fn start_containers(
    listener: TcpListener,
    api: super::containers::ContainersApi,
    probes: probes::Probes,
    metrics: super::request_metrics::RequestMetrics,
    workers: usize,
) -> std::io::Result<Server> {
    use actix_web::dev::Service;
    let server = HttpServer::new(move || {
        let (api, probes) = (api.clone(), probes.clone());
        // Per server worker: its label handles and fixed routes.
        let local = std::rc::Rc::new(super::request_metrics::LocalMetrics::new(metrics.clone()));
        App::new()
            .wrap(from_fn(super::limits::head))
            .wrap_fn(move |req, srv| {
                let started = std::time::Instant::now();
                let method = req.method().clone();
                let route = local.route(&req);
                let local = local.clone();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    local.observe(&method, &route, res.status().as_u16(), started);
                    Ok(res)
                }
            })
            // The probes first: a fixed path matches before the API's
            // patterns are tried (each a regex).
            .configure(|cfg| probes::configure(cfg, probes))
            .configure(|cfg| super::containers::configure(cfg, api))
            .default_service(web::to(no_route))
    })
    .on_connect(super::peer::remember)
    .workers(workers.max(1))
    .tcp_nodelay(true)
    .shutdown_timeout(10)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
