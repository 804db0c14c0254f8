//! The Kubernetes node source against a small in-test API server that speaks
//! `/api/v1/nodes` list and watch (JSON, chunked watch events,
//! resourceVersion, 410 Gone after compaction), served inside the test's
//! network namespace. kube-rs runs unmodified against it.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Node, pairs};
use serde_json::{Value, json};

const API_PORT: u16 = 6443;

#[derive(Default)]
struct ApiState {
    resource_version: u64,
    nodes: BTreeMap<String, Value>,
    /// Watch events after `compacted`, as (resourceVersion, event).
    events: Vec<(u64, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch stream.
    generation: u64,
    lists: u64,
    watches: u64,
}

struct FakeApi {
    state: Arc<(Mutex<ApiState>, Condvar)>,
    stop: Arc<AtomicBool>,
}

fn node_object(name: &str, cidr: &str, ip: &str, rv: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv.to_string()},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip}
        ]}
    })
}

impl FakeApi {
    /// Serves on 127.0.0.1:API_PORT inside the namespace `ns`.
    fn start(ns: &str) -> FakeApi {
        let state = Arc::new((Mutex::new(ApiState::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns_path = format!("/run/netns/{ns}");
        {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let f = fs::File::open(&ns_path).expect("netns");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let listener = TcpListener::bind(("127.0.0.1", API_PORT)).expect("bind");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            let stop = stop.clone();
                            std::thread::spawn(move || {
                                let _ = serve(stream, &state, &stop);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fake API server up");
        FakeApi { state, stop }
    }

    fn change(&self, f: impl FnOnce(&mut ApiState)) {
        let (lock, cv) = &*self.state;
        f(&mut lock.lock().unwrap());
        cv.notify_all();
    }

    fn apply(&self, name: &str, cidr: &str, ip: &str) {
        self.change(|s| {
            s.resource_version += 1;
            let obj = node_object(name, cidr, ip, s.resource_version);
            let kind = if s.nodes.contains_key(name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            s.nodes.insert(name.into(), obj.clone());
            let rv = s.resource_version;
            s.events.push((rv, json!({"type": kind, "object": obj})));
        });
    }

    fn delete(&self, name: &str) {
        self.change(|s| {
            s.resource_version += 1;
            if let Some(mut obj) = s.nodes.remove(name) {
                obj["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
                let rv = s.resource_version;
                s.events
                    .push((rv, json!({"type": "DELETED", "object": obj})));
            }
        });
    }

    /// Changes a node without a watch event, forgets the history and ends
    /// every watch: a client can only learn of the change by relisting after
    /// the 410 Gone it gets for its old resourceVersion.
    fn compact_with_silent_change(&self, name: &str, cidr: &str, ip: &str) {
        self.change(|s| {
            s.resource_version += 1;
            let obj = node_object(name, cidr, ip, s.resource_version);
            s.nodes.insert(name.into(), obj);
            s.events.clear();
            s.compacted = s.resource_version;
            s.generation += 1;
        });
    }

    fn counts(&self) -> (u64, u64) {
        let s = self.state.0.lock().unwrap();
        (s.lists, s.watches)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
    }
}

fn query(target: &str) -> BTreeMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn chunk(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{data}\r\n", data.len())?;
    stream.flush()
}

/// One request per connection (`Connection: close`).
fn serve(
    mut stream: TcpStream,
    state: &(Mutex<ApiState>, Condvar),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("");
    if path != "/api/v1/nodes" {
        return respond(
            &mut stream,
            "404 Not Found",
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
        );
    }
    let q = query(target);
    let (lock, cv) = state;
    if q.get("watch").map(String::as_str) != Some("true") {
        let mut s = lock.lock().unwrap();
        s.lists += 1;
        let body = json!({
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": s.resource_version.to_string()},
            "items": s.nodes.values().cloned().collect::<Vec<_>>(),
        });
        drop(s);
        return respond(&mut stream, "200 OK", &body);
    }

    let mut since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut s = lock.lock().unwrap();
    s.watches += 1;
    let generation = s.generation;
    if since < s.compacted {
        drop(s);
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        chunk(&mut stream, &format!("{gone}\n"))?;
        return chunk(&mut stream, "");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<(u64, Value)> = s
            .events
            .iter()
            .filter(|(rv, _)| *rv > since)
            .cloned()
            .collect();
        if !pending.is_empty() {
            drop(s);
            for (rv, event) in pending {
                chunk(&mut stream, &format!("{event}\n"))?;
                since = rv;
            }
            s = lock.lock().unwrap();
            continue;
        }
        if stop.load(Ordering::Relaxed) || s.generation != generation || Instant::now() > deadline {
            drop(s);
            return chunk(&mut stream, "");
        }
        s = cv.wait_timeout(s, Duration::from_millis(200)).unwrap().0;
    }
}

/// A kubeconfig for the fake API server, without credentials.
fn kubeconfig_text() -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{API_PORT}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\ncurrent-context: fake\n"
    )
}

#[test]
fn kubernetes_nodes_are_listed_watched_and_resynced_after_410() {
    let node = Node::new();
    let api = FakeApi::start(&node.ns.name);
    api.apply("node-a", "10.244.0.0/24", "192.0.2.1");
    api.apply("node-b", "10.244.1.0/24", "192.0.2.2");
    let kubeconfig = node.tmp.path().join("kubeconfig");
    fs::write(&kubeconfig, kubeconfig_text()).unwrap();
    let daemon = node.start_kube("node-a", &kubeconfig);

    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(30, "node-b from the initial list", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    daemon.until(30, "readyz 200", || {
        (node.ns.http_get("/readyz")?.0 == 200).then_some(())
    });
    let info = weir_datapath::node_info::NodeInfo::read(&node.node_json()).unwrap();
    assert_eq!(info.pod_cidrs, vec!["10.244.0.0/24".parse().unwrap()]);

    // Watch events: added, deleted, modified.
    api.apply("node-c", "10.244.2.0/24", "192.0.2.3");
    let want = pairs(&[
        ("10.244.1.0/24", "192.0.2.2"),
        ("10.244.2.0/24", "192.0.2.3"),
    ]);
    daemon.until(60, "node-c added by a watch event", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    api.delete("node-b");
    api.apply("node-c", "10.244.2.0/24", "192.0.2.33");
    let want = pairs(&[("10.244.2.0/24", "192.0.2.33")]);
    daemon.until(60, "node-b deleted and node-c moved", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    let (lists_before, _) = api.counts();

    // History compacted and the watch ended: the re-watch gets 410 Gone and
    // the source relists, finding a change no event announced.
    api.compact_with_silent_change("node-c", "10.244.2.0/24", "192.0.2.44");
    let want = pairs(&[("10.244.2.0/24", "192.0.2.44")]);
    daemon.until(90, "the relist after 410", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    let (lists_after, watches) = api.counts();
    assert!(lists_after > lists_before, "relisted after 410");
    assert!(watches >= 2, "watched more than once");
}

#[test]
fn an_api_server_that_is_down_at_start_is_retried_with_backoff() {
    let node = Node::new();
    let kubeconfig = node.tmp.path().join("kubeconfig");
    fs::write(&kubeconfig, kubeconfig_text()).unwrap();
    let daemon = node.start_kube("node-a", &kubeconfig);
    daemon.until(30, "the failed watch counted", || {
        let body = node.ns.http_get("/metrics")?.1;
        let errors = body
            .lines()
            .find(|l| l.starts_with("weir_node_source_errors_total "))?
            .rsplit(' ')
            .next()?
            .to_string();
        (errors != "0").then_some(())
    });
    assert_eq!(node.ns.http_get("/readyz").map(|r| r.0), Some(503));

    let api = FakeApi::start(&node.ns.name);
    api.apply("node-a", "10.244.0.0/24", "192.0.2.1");
    api.apply("node-b", "10.244.1.0/24", "192.0.2.2");
    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(90, "the sync once the API server is up", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    daemon.until(30, "readyz 200", || {
        (node.ns.http_get("/readyz")?.0 == 200).then_some(())
    });
}
