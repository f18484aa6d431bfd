//! Live reload (explicit, file watch, Kubernetes ConfigMap symlink swap),
//! drain on shutdown, admin endpoints and the `weft check` command.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::support::*;

fn one_route(cluster_yaml: &str, extra_listener: &str) -> String {
    config(
        &format!(
            "  - {{ name: public, address: 127.0.0.1:0, routes: [ {{ name: all, cluster: app }} ] }}\n{extra_listener}"
        ),
        cluster_yaml,
    )
}

fn app_at(upstream: &Upstream) -> String {
    format!("  - {{ name: app, endpoints: [ {{ address: {} }} ] }}", upstream.addr)
}

#[tokio::test]
async fn reload_applies_good_config_and_refuses_bad_one() {
    let v1 = Upstream::text("v1").await;
    let v2 = Upstream::text("v2").await;
    let weft = Weft::start(&one_route(&app_at(&v1), "")).await;
    let client = h1_client();
    let url = weft.url("public", "/").await;
    assert_eq!(get(&client, &url).await.1, "v1");

    weft.write(&one_route(&app_at(&v2), "  - { name: extra, address: 127.0.0.1:0, routes: [ { name: x, direct_response: { status: 200, body: extra } } ] }"));
    assert!(weft.app.reload(false).await.unwrap());
    assert_eq!(get(&client, &url).await.1, "v2", "same listener, new upstream");
    let extra = weft.url("extra", "/").await;
    assert_eq!(get(&client, &extra).await, (200, "extra".into()));

    // A broken file is refused with file, line and key; the old config serves on.
    weft.write(&one_route(
        &app_at(&v1).replace("name: app", "name: app, lb: fastest"),
        "",
    ));
    let err = weft.app.reload(false).await.unwrap_err();
    assert!(err.contains("weft.yaml:"), "{err}");
    assert!(err.contains("clusters[0].lb"), "{err}");
    assert_eq!(get(&client, &url).await.1, "v2");
    assert_eq!(get(&client, &extra).await, (200, "extra".into()));

    // Removing a listener closes it.
    weft.write(&one_route(&app_at(&v1), ""));
    assert!(weft.app.reload(false).await.unwrap());
    assert_eq!(get(&client, &url).await.1, "v1");
    assert!(weft.app.listener_addr("extra").await.is_none());
    let text = metrics(&weft).await;
    assert!(text.contains("weft_config_reloads_total{result=\"ok\"} 2"), "{text}");
    assert!(text.contains("weft_config_reloads_total{result=\"error\"} 1"), "{text}");
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_old_config() {
    let mut old = HeldUpstream::start("old and slow").await;
    let fast = Upstream::text("new").await;
    let weft = Weft::start(&one_route(&app_at(&old.upstream), "")).await;
    let url = weft.url("public", "/").await;
    let client = h1_client();
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await }
    });
    old.arrived().await;
    weft.write(&one_route(&app_at(&fast), ""));
    assert!(weft.app.reload(false).await.unwrap());
    assert_eq!(get(&client, &url).await.1, "new");
    old.release();
    assert_eq!(pending.await.unwrap(), (200, "old and slow".into()));
}

#[tokio::test]
async fn watcher_follows_in_place_edits_and_configmap_symlink_swaps() {
    let v1 = Upstream::text("v1").await;
    let v2 = Upstream::text("v2").await;
    let v3 = Upstream::text("v3").await;
    // Lay the directory out the way kubelet does: weft.yaml -> ..data/weft.yaml,
    // ..data -> ..2026_01; an update writes ..2026_02 and swaps ..data.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/weft.yaml"), one_route(&app_at(&v1), "")).unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/weft.yaml", root.join("weft.yaml")).unwrap();
    let loaded = weft::config::load(&root.join("weft.yaml")).unwrap();
    let app = weft::app::App::start(loaded).await.unwrap();
    let watcher = app.spawn_watcher(tokio::time::Duration::from_secs(30));
    let url = format!("http://{}/", app.listener_addr("public").await.unwrap());
    let client = h1_client();
    assert_eq!(get(&client, &url).await.1, "v1");

    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/weft.yaml"), one_route(&app_at(&v2), "")).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    eventually("symlink swap is picked up", async || get(&client, &url).await.1 == "v2").await;

    // An in-place edit of the real file, as an editor without rename does.
    std::fs::write(root.join("..v2/weft.yaml"), one_route(&app_at(&v3), "")).unwrap();
    eventually("in-place edit is picked up", async || {
        get(&client, &url).await.1 == "v3"
    })
    .await;
    watcher.abort();
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_turns_unready() {
    let mut slow = HeldUpstream::start("finished").await;
    let weft = Weft::start(&one_route(&app_at(&slow.upstream), "")).await;
    let client = h1_client();
    assert_eq!(get(&client, &weft.admin("/ready")).await.0, 200);
    let url = weft.url("public", "/").await;
    let addr = weft.addr("public").await;
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await }
    });
    slow.arrived().await;
    let app = weft.app.clone();
    let shutdown = tokio::spawn(async move { app.shutdown().await });
    eventually("ready turns 503", async || {
        get(&h1_client(), &weft.admin("/ready")).await.0 == 503
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the in-flight request"
    );
    slow.release();
    assert_eq!(pending.await.unwrap(), (200, "finished".into()));
    shutdown.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener must be closed"
    );
}

#[tokio::test]
async fn drain_closes_connections_that_never_sent_a_request() {
    let upstream = Upstream::text("x").await;
    let yaml = config(
        "  - { name: public, address: 127.0.0.1:0, limits: { header_read_timeout: 60s }, routes: [ { name: all, cluster: app } ] }",
        &app_at(&upstream),
    );
    let weft = Weft::start(&yaml).await;
    let mut silent = tokio::net::TcpStream::connect(weft.addr("public").await).await.unwrap();
    // Served first, so the silent connection has surely been accepted.
    assert_eq!(get(&h1_client(), &weft.url("public", "/").await).await.0, 200);
    weft.app.shutdown().await;
    // Closed by the drain, not left to its 60 s header timeout (the bound
    // only guards against a hang).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent connection outlived the drain");
}

#[tokio::test]
async fn admin_endpoints() {
    let upstream = Upstream::text("x").await;
    let yaml = one_route(
        &format!(
            "  - {{ name: app, endpoints: [ {{ address: {}, zone: zone-b, weight: 3 }} ] }}",
            upstream.addr
        ),
        "",
    );
    let weft = Weft::start(&yaml).await;
    let client = h1_client();
    assert_eq!(get(&client, &weft.admin("/live")).await.0, 200);
    let (status, clusters) = get(&client, &weft.admin("/clusters")).await;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let endpoint = &clusters[0]["endpoints"][0];
    assert_eq!(endpoint["zone"], "zone-b");
    assert_eq!(endpoint["weight"], 3);
    assert_eq!(endpoint["in_flight"], 0);
    assert_eq!(endpoint["health"], "healthy");
    let (_, config) = get(&client, &weft.admin("/config")).await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["listeners"][0]["name"], "public");
    assert_eq!(config["drain_timeout"], "15s");
    get(&client, &weft.url("public", "/").await).await;
    let text = metrics(&weft).await;
    for family in [
        "weft_config_reloads_total{result=\"error\"} 0",
        "weft_downstream_connections_active{listener=\"public\"}",
        "weft_downstream_connections_total{listener=\"public\"}",
        "weft_requests_total{",
        "weft_request_duration_seconds_bucket{",
        "weft_upstream_requests_total{",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
}

#[test]
fn check_command_accepts_shipped_configs_and_names_broken_keys() {
    let weft = env!("CARGO_BIN_EXE_weft");
    let dirs = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
    ];
    // Files that use TLS are checked as shipped (config/certs is committed)
    // and again next to freshly made certificates, so the script stays right.
    let scratch = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/config/make-certs.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg(scratch.path().join("certs"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut checked = 0;
    for entry in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut paths = vec![path.clone()];
        if std::fs::read_to_string(&path).unwrap().contains("certs/") {
            let copy = scratch.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &copy).unwrap();
            paths.push(copy);
        }
        for path in paths {
            let out = std::process::Command::new(weft)
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("ok ("));
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} config files found");
    // The sidecar's config ships inside a ConfigMap (data."weft.yaml").
    let config_map = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sidecar/weft-config.yaml");
    let config_map: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(config_map).unwrap()).unwrap();
    let sidecar = scratch.path().join("sidecar.yaml");
    std::fs::write(&sidecar, config_map["data"]["weft.yaml"].as_str().unwrap()).unwrap();
    let out = std::process::Command::new(weft)
        .args(["check", "--config"])
        .arg(&sidecar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/sidecar/weft-config.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml")).unwrap();
    std::fs::write(&broken, demo.replacen("cluster: web-canary", "cluster: web-canery", 1)).unwrap();
    let out = std::process::Command::new(weft)
        .args(["check", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml:"), "{err}");
    assert!(
        err.contains(".cluster: no cluster named \"web-canery\" (did you mean \"web-canary\"?)"),
        "{err}"
    );
}
