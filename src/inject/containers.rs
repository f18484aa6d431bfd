//! The objects weft adds to a pod, as the subset of the Kubernetes schema
//! they use (field names and order as `kubectl` shows them):
//!
//! - `weft-init`: runs `weft init-iptables`; root with NET_ADMIN and NET_RAW
//!   only, read-only root filesystem, an emptyDir on `/run` for the legacy
//!   backend's xtables lock.
//! - `weft`: the proxy, as the image's non-root user (the proxy uid),
//!   read-only root filesystem, no capabilities; the config ConfigMap on
//!   `/etc/weft`; a startup probe on `/ready` (with native sidecars the app
//!   starts only once it passes), readiness on `/ready`, liveness on `/live`.
//!   Natively an init container with `restartPolicy: Always`; otherwise a
//!   plain container whose `postStart` hook runs `weft await`.

use serde::Serialize;
use serde_yaml_ng::Value;

use super::options::{InjectOptions, Zone};

pub const INIT_CONTAINER: &str = "weft-init";
pub const PROXY_CONTAINER: &str = "weft";
pub const CONFIG_VOLUME: &str = "weft-config";
pub const LOCK_VOLUME: &str = "weft-xtables-lock";
/// Where the ConfigMap is mounted; its key `weft.yaml` is the config.
pub const CONFIG_DIR: &str = "/etc/weft";
/// The binary's path in the image, for exec hooks (which bypass the entrypoint).
pub const BINARY: &str = "/usr/local/bin/weft";
/// How long the `postStart` hook waits for `/ready`.
pub const AWAIT_TIMEOUT: &str = "120s";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
    #[serde(skip_serializing_if = "Option::is_none")]
    startup_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifecycle: Option<Lifecycle>,
    resources: Resources,
    security_context: SecurityContext,
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_from: Option<EnvSource>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    field_ref: FieldRef,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    name: &'static str,
    container_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    period_seconds: u32,
    failure_threshold: u32,
}

#[derive(Serialize)]
struct HttpGet {
    path: &'static str,
    port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Lifecycle {
    post_start: Handler,
}

#[derive(Serialize)]
struct Handler {
    exec: Exec,
}

#[derive(Serialize)]
struct Exec {
    command: Vec<String>,
}

#[derive(Serialize)]
struct Resources {
    requests: Requests,
}

#[derive(Serialize)]
struct Requests {
    cpu: String,
    memory: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    allow_privilege_escalation: bool,
    capabilities: Capabilities,
    read_only_root_filesystem: bool,
    run_as_non_root: bool,
    run_as_user: u32,
}

#[derive(Serialize)]
struct Capabilities {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add: Vec<&'static str>,
    drop: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: &'static str,
    mount_path: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_map: Option<ConfigMapSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_dir: Option<EmptyDir>,
}

#[derive(Serialize)]
struct ConfigMapSource {
    name: String,
}

#[derive(Serialize)]
struct EmptyDir {}

/// The init container that writes the capture rules.
pub fn init_container(opts: &InjectOptions) -> Result<Value, String> {
    to_value(Container {
        name: INIT_CONTAINER,
        image: opts.image.clone(),
        args: opts.init_args(),
        restart_policy: None,
        env: Vec::new(),
        ports: Vec::new(),
        startup_probe: None,
        readiness_probe: None,
        liveness_probe: None,
        lifecycle: None,
        resources: requests(opts),
        security_context: SecurityContext {
            allow_privilege_escalation: false,
            capabilities: Capabilities {
                add: vec!["NET_ADMIN", "NET_RAW"],
                drop: vec!["ALL"],
            },
            read_only_root_filesystem: true,
            // iptables needs root with those two capabilities; the image's user is not root.
            run_as_non_root: false,
            run_as_user: 0,
        },
        volume_mounts: vec![VolumeMount {
            name: LOCK_VOLUME,
            mount_path: "/run",
            read_only: false,
        }],
    })
}

/// The proxy container: native (an init container that keeps running) or
/// classic (first app container, held by a `postStart` hook).
pub fn proxy_container(opts: &InjectOptions) -> Result<Value, String> {
    let admin = opts.capture.admin_port;
    let probe = |path, period_seconds, failure_threshold| Probe {
        http_get: HttpGet { path, port: admin },
        period_seconds,
        failure_threshold,
    };
    let lifecycle = (!opts.native_sidecar).then(|| Lifecycle {
        post_start: Handler {
            exec: Exec {
                command: vec![
                    BINARY.to_string(),
                    "await".to_string(),
                    format!("--admin-address=127.0.0.1:{admin}"),
                    format!("--timeout={AWAIT_TIMEOUT}"),
                ],
            },
        },
    });
    to_value(Container {
        name: PROXY_CONTAINER,
        image: opts.image.clone(),
        args: vec!["run".into(), "--config".into(), format!("{CONFIG_DIR}/weft.yaml")],
        restart_policy: opts.native_sidecar.then_some("Always"),
        env: zone_env(&opts.zone),
        ports: vec![Port {
            name: "weft-admin",
            container_port: admin,
        }],
        // Up to two minutes to become ready before the kubelet restarts it.
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        lifecycle,
        resources: requests(opts),
        security_context: SecurityContext {
            allow_privilege_escalation: false,
            capabilities: Capabilities {
                add: Vec::new(),
                drop: vec!["ALL"],
            },
            read_only_root_filesystem: true,
            run_as_non_root: true,
            run_as_user: opts.capture.proxy_uid,
        },
        volume_mounts: vec![VolumeMount {
            name: CONFIG_VOLUME,
            mount_path: CONFIG_DIR,
            read_only: true,
        }],
    })
}

/// The pod volumes both containers mount.
pub fn volumes(opts: &InjectOptions) -> Result<Vec<Value>, String> {
    let config = Volume {
        name: CONFIG_VOLUME,
        config_map: Some(ConfigMapSource {
            name: opts.config_map.clone(),
        }),
        empty_dir: None,
    };
    let lock = Volume {
        name: LOCK_VOLUME,
        config_map: None,
        empty_dir: Some(EmptyDir {}),
    };
    Ok(vec![to_value(config)?, to_value(lock)?])
}

fn zone_env(zone: &Zone) -> Vec<EnvVar> {
    let var = |value, value_from| EnvVar {
        name: "WEFT_ZONE",
        value,
        value_from,
    };
    match zone {
        Zone::Downward => vec![var(
            None,
            Some(EnvSource {
                field_ref: FieldRef {
                    field_path: "metadata.labels['topology.kubernetes.io/zone']",
                },
            }),
        )],
        Zone::Fixed(name) => vec![var(Some(name.clone()), None)],
        Zone::Unset => Vec::new(),
    }
}

fn requests(opts: &InjectOptions) -> Resources {
    Resources {
        requests: Requests {
            cpu: opts.cpu_request.clone(),
            memory: opts.memory_request.clone(),
        },
    }
}

fn to_value(v: impl Serialize) -> Result<Value, String> {
    serde_yaml_ng::to_value(v).map_err(|e| format!("cannot build the sidecar: {e}"))
}
