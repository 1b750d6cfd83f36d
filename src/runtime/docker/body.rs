//! A container spec as the engine's create body: limits, hardening,
//! mounts, the `none` log driver, and Podman's ulimits.

use super::*;

/// This process's hard limit of a resource, from `/proc/self/limits`
/// (`Max open files`, `Max processes`).
fn hard_limit(label: &str) -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// Podman asks for higher `nofile`/`nproc` limits than an unprivileged
/// service may grant, and the container then fails to start. Ask for
/// modest limits that any service can hand down (the pids limit still
/// bounds processes).
fn podman_ulimits() -> Vec<ResourcesUlimits> {
    let cap = |label: &str| hard_limit(label).unwrap_or(4096).min(4096);
    vec![
        ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(cap("Max open files").min(1024)),
            hard: Some(cap("Max open files")),
        },
        ResourcesUlimits {
            name: Some("nproc".into()),
            soft: Some(cap("Max processes")),
            hard: Some(cap("Max processes")),
        },
    ]
}

pub(super) fn create_body(spec: &ContainerSpec, provider: &str) -> ContainerCreateBody {
    let h = &spec.hardening;
    let mut security_opt = Vec::new();
    if h.no_new_privileges {
        security_opt.push("no-new-privileges:true".to_owned());
    }
    let mut mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    mounts.extend(spec.volumes.iter().map(|target| Mount {
        target: Some(target.clone()),
        typ: Some(MountType::VOLUME),
        read_only: Some(false),
        ..Default::default()
    }));
    let host_config = HostConfig {
        memory: spec.limits.memory_bytes,
        // No swap beyond the memory limit, so the limit is real.
        memory_swap: spec.limits.memory_bytes,
        nano_cpus: spec.limits.nano_cpus,
        pids_limit: spec.limits.pids,
        cap_drop: h.drop_all_capabilities.then(|| vec!["ALL".to_owned()]),
        security_opt: (!security_opt.is_empty()).then_some(security_opt),
        readonly_rootfs: Some(h.read_only_root),
        tmpfs: (!h.tmpfs.is_empty()).then(|| h.tmpfs.clone().into_iter().collect()),
        network_mode: Some(if spec.network.is_empty() {
            "none".to_owned()
        } else {
            spec.network.clone()
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        mounts: (!mounts.is_empty()).then_some(mounts),
        init: Some(false),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        ulimits: (provider == "podman").then(podman_ulimits),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.workdir.clone(),
        user: h.user.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        tty: Some(false),
        network_disabled: Some(spec.network == "none" || spec.network.is_empty()),
        host_config: Some(host_config),
        ..Default::default()
    }
}
