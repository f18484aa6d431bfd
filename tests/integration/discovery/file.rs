//! File discovery: in-place edits, rename-overs and a ConfigMap-style
//! `..data` symlink swap of the endpoints file move traffic without a
//! failed request; an invalid file is refused and the old set kept.

use std::path::Path;

use super::*;

fn endpoints_yaml(upstreams: &[&Upstream]) -> String {
    let items: Vec<String> = upstreams
        .iter()
        .map(|u| format!("  - {{ address: {} }}\n", u.addr))
        .collect();
    format!("endpoints:\n{}", items.concat())
}

const ONE_ROUTE: &str = "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, match: { path_prefix: / }, cluster: web }";

async fn start_with_file(dir: &Path, file: &str) -> Weft {
    let clusters = format!("  - name: web\n    discovery: {{ file: {{ path: {file} }} }}");
    let weft_dir = tempfile::tempdir_in(dir).unwrap();
    let path = weft_dir.path().join("weft.yaml");
    // The endpoints file is named relative to the config file.
    std::fs::write(&path, config(ONE_ROUTE, &clusters.replace("path: ", "path: ../"))).unwrap();
    let loaded = weft::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let app = weft::app::App::start(loaded).await.unwrap();
    Weft {
        app,
        dir: weft_dir,
        path,
    }
}

#[tokio::test]
async fn edits_and_rename_overs_move_traffic_and_an_invalid_file_keeps_the_old_set() {
    let (u1, u2, u3) = (
        Upstream::text("u1").await,
        Upstream::text("u2").await,
        Upstream::text("u3").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, endpoints_yaml(&[&u1])).unwrap();
    let weft = start_with_file(dir.path(), "endpoints.yaml").await;
    let status = cluster_status(&weft, "web").await;
    assert_eq!(status["discovery"]["kind"], "file");
    let source = status["endpoints"][0]["source"].as_str().unwrap().to_string();
    assert!(
        source.starts_with("file:") && source.ends_with("endpoints.yaml"),
        "{source}"
    );

    let traffic = Traffic::start(weft.url("public", "/").await);
    eventually("u1 serves", async || traffic.last_body().as_deref() == Some("u1")).await;

    // An in-place edit.
    std::fs::write(&file, endpoints_yaml(&[&u2])).unwrap();
    eventually("the in-place edit moves traffic to u2", async || {
        traffic.last_body().as_deref() == Some("u2")
    })
    .await;

    // An editor's rename-over.
    let temporary = dir.path().join(".endpoints.yaml.swp");
    std::fs::write(&temporary, endpoints_yaml(&[&u3])).unwrap();
    std::fs::rename(&temporary, &file).unwrap();
    eventually("the rename-over moves traffic to u3", async || {
        traffic.last_body().as_deref() == Some("u3")
    })
    .await;

    // An invalid file: refused, counted, the old set stays.
    let errors = || async {
        metric(
            &metrics(&weft).await,
            "weft_discovery_updates_total{cluster=\"web\",result=\"error\"} ",
        )
    };
    let before = errors().await;
    std::fs::write(
        &file,
        "endpoints:\n  - { address: 127.0.0.1:1 }\n  - { address: nowhere }\n",
    )
    .unwrap();
    eventually("the invalid file is refused", async || errors().await > before).await;
    let status = cluster_status(&weft, "web").await;
    assert_eq!(status["discovery"]["state"], "failing");
    let error = status["discovery"]["last_error"].as_str().unwrap();
    assert!(error.contains("endpoints.yaml:3: endpoints[1].address"), "{error}");
    assert_eq!(endpoint_addresses(&weft, "web").await, [u3.addr.to_string()]);

    let answers = traffic.stop().await;
    assert_all_ok(&answers);
    assert_eq!(answers.last().unwrap().1, "u3", "the old set keeps serving");
}

#[tokio::test]
async fn a_configmap_symlink_swap_moves_traffic() {
    let (u1, u2) = (Upstream::text("u1").await, Upstream::text("u2").await);
    // The kubelet's layout: endpoints.yaml -> ..data/endpoints.yaml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    for (version, upstream) in [("..v1", &u1), ("..v2", &u2)] {
        std::fs::create_dir(mount.join(version)).unwrap();
        std::fs::write(mount.join(version).join("endpoints.yaml"), endpoints_yaml(&[upstream])).unwrap();
    }
    std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/endpoints.yaml", mount.join("endpoints.yaml")).unwrap();
    let weft = start_with_file(mount, "endpoints.yaml").await;

    let traffic = Traffic::start(weft.url("public", "/").await);
    eventually("u1 serves", async || traffic.last_body().as_deref() == Some("u1")).await;
    // The atomic swap: a new symlink renamed over ..data.
    std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    eventually("the swap moves traffic to u2", async || {
        traffic.last_body().as_deref() == Some("u2")
    })
    .await;
    assert_all_ok(&traffic.stop().await);
}

#[tokio::test]
async fn health_checks_follow_the_endpoint_set() {
    let good = Upstream::text("good").await;
    // Fails its health check: only a probe of it can mark it unhealthy.
    let sick =
        Upstream::start(|_req| async move { http::Response::builder().status(503).body(full("sick")).unwrap() }).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, endpoints_yaml(&[&good])).unwrap();
    let clusters = "  - name: web
    discovery: { file: { path: endpoints.yaml } }
    health_check: { path: /healthz, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }";
    let path = dir.path().join("weft.yaml");
    std::fs::write(&path, config(ONE_ROUTE, clusters)).unwrap();
    let app = weft::app::App::start(weft::config::load(&path).unwrap()).await.unwrap();
    let weft = Weft { app, dir, path };
    let health_of = |addr: std::net::SocketAddr| {
        let weft = &weft;
        async move {
            let status = cluster_status(weft, "web").await;
            let endpoint = status["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == addr.to_string().as_str())
                .cloned();
            endpoint.map(|e| e["health"].as_str().unwrap().to_string())
        }
    };

    std::fs::write(&file, endpoints_yaml(&[&good, &sick])).unwrap();
    eventually("the added endpoint is probed and found unhealthy", async || {
        health_of(sick.addr).await.as_deref() == Some("unhealthy")
    })
    .await;
    assert_eq!(health_of(good.addr).await.as_deref(), Some("healthy"));
    assert!(sick.open.load(Ordering::SeqCst) > 0, "the probes' pooled connection");

    std::fs::write(&file, endpoints_yaml(&[&good])).unwrap();
    eventually(
        "the removed endpoint's probes stop and its connection closes",
        async || sick.open.load(Ordering::SeqCst) == 0,
    )
    .await;
    assert_eq!(health_of(sick.addr).await, None);
}

#[tokio::test]
async fn a_cluster_deleted_by_a_reload_loses_its_gauges() {
    let u1 = Upstream::text("u1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints_yaml(&[&u1])).unwrap();
    let listeners = |cluster: &str| {
        format!("  - {{ name: public, address: 127.0.0.1:0, routes: [ {{ name: all, match: {{ path_prefix: / }}, cluster: {cluster} }} ] }}")
    };
    let kept = format!("  - {{ name: kept, endpoints: [ {{ address: {} }} ] }}", u1.addr);
    let web = "  - { name: web, discovery: { file: { path: endpoints.yaml } } }";
    let app = start_in(dir.path(), &config(&listeners("web"), &format!("{kept}\n{web}"))).await;
    let exported = async || {
        get(&h1_client(), &format!("http://{}/metrics", app.admin_addr()))
            .await
            .1
    };
    let text = exported().await;
    assert_eq!(metric(&text, "weft_cluster_endpoints{cluster=\"web\"} "), 1.0);
    metric(&text, "weft_discovery_last_success_timestamp_seconds{cluster=\"web\"} ");

    std::fs::write(dir.path().join("weft.yaml"), config(&listeners("kept"), &kept)).unwrap();
    assert!(app.reload(true).await.unwrap());
    let text = exported().await;
    assert_eq!(metric(&text, "weft_cluster_endpoints{cluster=\"kept\"} "), 1.0);
    for gone in [
        "weft_cluster_endpoints{cluster=\"web\"}",
        "weft_discovery_last_success_timestamp_seconds{cluster=\"web\"}",
    ] {
        assert!(!text.contains(gone), "{gone} is still exported:\n{text}");
    }
}
