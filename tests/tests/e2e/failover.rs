//! Two coordinators on one PostgreSQL store: one leads through the lease, the other
//! stands by. Faults for real: kill -9 of the leader, SIGSTOP past its lease, and
//! PostgreSQL itself restarted under a running build.

use std::time::{Duration, Instant};

use helix_tests::postgres::Postgres;
use helix_tests::{path, require_tool, sleepy_repo, wait_for, Agent, Coordinator, Registry};

/// PostgreSQL, a registry, coordinators sharing the store, and agents that were
/// told only the first coordinator's address (they learn the others from it).
struct HaCluster {
    pg: Postgres,
    registry: Registry,
    coords: Vec<Coordinator>,
    agents: Vec<Agent>,
}

impl HaCluster {
    fn start(root: &std::path::Path, coordinators: usize, agents: usize) -> HaCluster {
        require_tool("buildah", "buildah");
        let pg = Postgres::start().expect("start PostgreSQL");
        let registry = Registry::start(root);
        let url = pg.url();
        let first = Coordinator::init_with(root, "c1", "ha", &["--store", &url]);
        let mut coords = vec![first];
        for n in 2..=coordinators {
            let ca_from = coords[0].dir.clone();
            coords.push(Coordinator::init_with(
                root,
                &format!("c{n}"),
                "ha",
                &["--store", &url, "--ca-from", path(&ca_from)],
            ));
        }
        let flags = [
            "--store",
            url.as_str(),
            "--allow-file-repos",
            "--insecure-registry",
            registry.addr.as_str(),
            // Peers of a stopped process notice within seconds, not the default 10 s.
            "--idle-timeout",
            "6s",
        ];
        coords[0].start(&flags);
        let leader = coords[0].addr().to_string();
        wait_for(Duration::from_secs(20), "c1 to lead", || {
            (leader_of(&coords[0]).as_deref() == Some(leader.as_str())).then_some(())
        });
        for c in coords.iter_mut().skip(1) {
            c.start(&flags);
        }
        let mut started = Vec::new();
        for n in 1..=agents {
            let mut agent = Agent::new(root, &format!("agent{n}"));
            agent.join(coords[0].addr(), &coords[0].token(&[])).ok();
            agent.start(&[
                "--coordinator",
                coords[0].addr(),
                "--insecure-registry",
                registry.addr.as_str(),
                "--platform",
                "linux/amd64",
            ]);
            started.push(agent);
        }
        for agent in &started {
            coords[0].wait_agent(
                &agent.name,
                Duration::from_secs(60),
                "agents to connect",
                |a| a["connected"] == true,
            );
        }
        // The leader tells its agents every coordinator it sees heartbeat (checked
        // each lease-renew): wait until each agent has learned them all.
        let all: Vec<String> = coords.iter().map(|c| c.addr().to_string()).collect();
        for agent in &started {
            wait_for(
                Duration::from_secs(20),
                "agents to learn every coordinator",
                || {
                    let text = std::fs::read_to_string(agent.dir.join("coordinators.json")).ok()?;
                    all.iter().all(|a| text.contains(a.as_str())).then_some(())
                },
            );
        }
        HaCluster {
            pg,
            registry,
            coords,
            agents: started,
        }
    }

    fn submit(&self, via: usize, repo: &str, tag: &str) -> String {
        let image = format!("{}/{tag}", self.registry.addr);
        self.coords[via].submit(repo, "linux/amd64", &image, &[])
    }

    fn get(&self, via: usize, id: &str) -> serde_json::Value {
        self.coords[via].build_get(id)
    }

    /// How many rows, of every table a leader writes, were written under `epoch`
    /// after epoch `later` began.
    fn written_under_after(&self, epoch: u64, later: u64) -> u64 {
        let union = [
            "helix_tokens",
            "helix_agents",
            "helix_builds",
            "helix_jobs",
            "helix_cache",
            "helix_logs",
            "helix_contexts",
        ]
        .map(|t| format!("SELECT epoch, written_at FROM {t}"))
        .join(" UNION ALL ");
        let sql = format!(
            "SELECT count(*) FROM ({union}) w WHERE w.epoch = {epoch} \
             AND w.written_at > (SELECT began_at FROM helix_epochs WHERE epoch = {later})"
        );
        self.pg
            .psql(&sql)
            .expect("query")
            .trim()
            .parse()
            .expect("a count")
    }
}

/// `cluster status --json` through `via`: the leader's address.
fn leader_of(via: &Coordinator) -> Option<String> {
    let out = via.admin(&["cluster", "status", "--json"]);
    if out.code != Some(0) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    v["leader"].as_str().map(str::to_string)
}

fn epoch_of(via: &Coordinator) -> u64 {
    let out = via.admin(&["cluster", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    v["epoch"].as_u64().expect("epoch")
}

fn phase(build: &serde_json::Value) -> String {
    let phase = &build["build"]["phase"];
    match phase.as_str() {
        Some(s) => s.to_string(),
        None => phase
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default(),
    }
}

fn job_running(build: &serde_json::Value) -> bool {
    build["jobs"]
        .as_array()
        .is_some_and(|jobs| jobs.iter().any(|j| j["state"]["Running"].is_object()))
}

#[test]
fn kill9_of_the_leader_hands_over_and_every_build_succeeds_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = HaCluster::start(root.path(), 2, 2);
    let mut cluster = cluster;
    let repo = sleepy_repo(&root.path().join("repo"), "ha-kill-marker", "3");
    let ids: Vec<String> = (0..10)
        .map(|n| cluster.submit(0, &repo, &format!("ha/app:v{n}")))
        .collect();
    wait_for(Duration::from_secs(60), "a build to run", || {
        ids.iter()
            .any(|id| job_running(&cluster.get(0, id)))
            .then_some(())
    });

    let running: Vec<&String> = ids
        .iter()
        .filter(|id| job_running(&cluster.get(0, id)))
        .collect();
    let standby = cluster.coords[1].addr().to_string();
    let killed = Instant::now();
    cluster.coords[0].kill9();
    wait_for(Duration::from_secs(40), "the standby to lead", || {
        (leader_of(&cluster.coords[1]).as_deref() == Some(standby.as_str())).then_some(())
    });
    let takeover = killed.elapsed();
    eprintln!(
        "FIGURE takeover after kill -9 of the leader: {:.1} s (lease-ttl 10 s, lease-renew 2 s)",
        takeover.as_secs_f64()
    );
    // The agents were told only c1's address: they learnt c2 from it.
    for agent in &cluster.agents {
        cluster.coords[1].wait_agent(
            &agent.name,
            Duration::from_secs(60),
            "agents to reconnect to c2",
            |a| a["connected"] == true,
        );
    }
    for id in &ids {
        let out = cluster.coords[1].admin(&["build", "wait", id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|_| panic!("build wait --json: {out:?}"));
        assert_eq!(out.code, Some(0), "build {id} did not succeed: {v}");
        assert_eq!(phase(&v), "Succeeded", "{v}");
    }
    // Exactly one terminal state each, in the store: ten builds, all succeeded, none
    // active, and the registry holds the index each build reports.
    let rows = cluster
        .pg
        .psql(
            "SELECT count(*) FILTER (WHERE record->'phase' ? 'Succeeded'), \
             count(*) FILTER (WHERE active), count(*) FROM helix_builds",
        )
        .expect("query");
    assert_eq!(rows.trim(), "10|0|10");
    // The jobs running when the leader died were re-attached within the grace
    // period, not built again: still at their first attempt.
    for id in &running {
        let v = cluster.get(1, id);
        assert_eq!(v["jobs"][0]["attempt"], 1, "build {id} was rebuilt: {v}");
    }
    for (n, id) in ids.iter().enumerate() {
        let v = cluster.get(1, id);
        let digest = v["build"]["phase"]["Succeeded"]["index_digest"]
            .as_str()
            .expect("index digest")
            .to_string();
        let raw = cluster.registry.inspect_raw(&format!("ha/app:v{n}")).ok();
        let pushed = format!(
            "sha256:{}",
            crate::builds::sha256_hex(raw.stdout.as_bytes())
        );
        assert_eq!(
            pushed, digest,
            "the index under ha/app:v{n} is the one recorded"
        );
    }
    // Logs live in the shared store: the new leader serves those its predecessor
    // received, for every build.
    for id in &ids {
        let out = cluster.coords[1].admin(&["build", "logs", id]).ok();
        assert!(out.stdout.contains("ha-kill-marker"), "build {id}: {out:?}");
    }
    let log = cluster.coords[1].log();
    assert!(log.contains("elected leader"), "{log}");
}

#[test]
fn a_paused_leader_is_fenced_and_steps_down() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = HaCluster::start(root.path(), 2, 1);
    let repo = sleepy_repo(&root.path().join("repo"), "ha-stop-marker", "4");
    let ids: Vec<String> = (0..3)
        .map(|n| cluster.submit(0, &repo, &format!("ha/stop:v{n}")))
        .collect();
    wait_for(Duration::from_secs(60), "a build to run", || {
        ids.iter()
            .any(|id| job_running(&cluster.get(0, id)))
            .then_some(())
    });
    let old_epoch = epoch_of(&cluster.coords[0]);

    let paused = cluster.coords[0].proc.as_ref().expect("running");
    paused.signal(libc::SIGSTOP);
    let standby = cluster.coords[1].addr().to_string();
    wait_for(Duration::from_secs(40), "the standby to lead", || {
        (leader_of(&cluster.coords[1]).as_deref() == Some(standby.as_str())).then_some(())
    });
    let new_epoch = epoch_of(&cluster.coords[1]);
    assert!(new_epoch > old_epoch);
    // Let the new leader work a while, then wake the old one up.
    std::thread::sleep(Duration::from_secs(2));
    cluster.coords[0]
        .proc
        .as_ref()
        .expect("running")
        .signal(libc::SIGCONT);
    wait_for(
        Duration::from_secs(30),
        "the old leader to step down",
        || {
            cluster.coords[0]
                .log()
                .contains("stepping down")
                .then_some(())
        },
    );
    for id in &ids {
        let out = cluster.coords[1].admin(&["build", "wait", id, "--json"]);
        assert_eq!(out.code, Some(0), "build {id}: {out:?}");
    }
    // The old leader now redirects to the new one.
    assert_eq!(
        leader_of(&cluster.coords[0]).as_deref(),
        Some(standby.as_str())
    );

    // From the database: nothing written under the old epoch once the new one began,
    // while the new leader did write (so the query can see writes at all).
    assert_eq!(cluster.written_under_after(old_epoch, new_epoch), 0);
    let new_rows: u64 = cluster
        .pg
        .psql(&format!(
            "SELECT count(*) FROM helix_jobs WHERE epoch = {new_epoch}"
        ))
        .expect("query")
        .trim()
        .parse()
        .expect("count");
    assert!(new_rows > 0, "the new leader wrote no job");
    let log = cluster.coords[0].log();
    assert_eq!(
        log.matches("elected leader").count(),
        1,
        "the old leader must not lead again: {log}"
    );
}

#[test]
fn postgres_restarted_under_a_build_loses_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = HaCluster::start(root.path(), 1, 1);
    let repo = sleepy_repo(&root.path().join("repo"), "ha-pg-marker", "6");
    let id = cluster.submit(0, &repo, "ha/pg:v1");
    wait_for(Duration::from_secs(60), "the build to run", || {
        job_running(&cluster.get(0, &id)).then_some(())
    });
    let metrics = cluster.coords[0].metrics_addr();
    assert_eq!(crate::metrics::scrape(&metrics, "/readyz").0, 200);

    let t0 = Instant::now();
    cluster.pg.stop().expect("stop PostgreSQL");
    wait_for(Duration::from_secs(20), "/readyz to say not ready", || {
        (crate::metrics::scrape(&metrics, "/readyz").0 == 503).then_some(())
    });
    eprintln!(
        "FIGURE /readyz not ready {:.1} s after PostgreSQL stopped",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let t1 = Instant::now();
    cluster.pg.start_again().expect("start PostgreSQL again");
    wait_for(Duration::from_secs(30), "/readyz to say ready", || {
        (crate::metrics::scrape(&metrics, "/readyz").0 == 200).then_some(())
    });
    eprintln!(
        "FIGURE /readyz ready {:.1} s after PostgreSQL restarted",
        t1.elapsed().as_secs_f64()
    );
    let out = cluster.coords[0].admin(&["build", "wait", &id, "--json"]);
    eprintln!(
        "FIGURE build finished {:.1} s after PostgreSQL restarted",
        t1.elapsed().as_secs_f64()
    );
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("build wait --json: {out:?}"));
    assert_eq!(out.code, Some(0), "{v}");
    assert_eq!(phase(&v), "Succeeded", "{v}");
    let log = cluster.coords[0].log();
    assert!(
        log.contains("unavailable") || log.contains("cannot reach the store"),
        "{log}"
    );
}

#[test]
fn a_second_coordinator_needs_the_clusters_ca() {
    let root = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start().expect("start PostgreSQL");
    let url = pg.url();
    let first = Coordinator::init_with(root.path(), "c1", "ha", &["--store", &url]);
    // Without --ca-from a second coordinator would have a CA of its own, which the
    // agents enrolled by the first do not trust: refused, pointing at --ca-from.
    let ran = helix_tests::run(
        &helix_tests::bin("helix-coordinator"),
        &helix_tests::s(&[
            "init",
            "--data-dir",
            path(&root.path().join("c2")),
            "--cluster",
            "ha",
            "--store",
            &url,
        ]),
        &[],
        helix_tests::CMD_TIMEOUT,
    )
    .fails_with(2, "--ca-from");
    assert!(!ran.stderr.contains("helix-test-pw"), "{ran:?}");
    assert!(!root.path().join("c2").join("ca.key").exists());
    // With it, the second one shares the CA: same fingerprint, its own server key.
    Coordinator::init_with(
        root.path(),
        "c3",
        "ha",
        &["--store", &url, "--ca-from", path(&first.dir)],
    );
    let read = |dir: &std::path::Path, f: &str| std::fs::read(dir.join(f)).expect("read");
    assert_eq!(
        read(&first.dir, "ca.pem"),
        read(&root.path().join("c3"), "ca.pem")
    );
    assert_ne!(
        read(&first.dir, "server.key"),
        read(&root.path().join("c3"), "server.key")
    );
}

#[test]
fn a_leader_stopping_cleanly_hands_over_before_its_lease_runs_out() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = HaCluster::start(root.path(), 2, 0);
    // The lease as the leader last renewed it: a standby could take it over at this
    // time at the earliest, were it not given up.
    let expiry = cluster
        .pg
        .psql("SELECT expires_at FROM helix_lease")
        .expect("query");
    let metrics = cluster.coords[0].metrics_addr();
    let scrape = crate::metrics::scrape(&metrics, "/metrics").1;
    assert!(scrape.contains("helix_coordinator_leader 1"), "{scrape}");

    let proc = cluster.coords[0].proc.as_mut().expect("running");
    proc.signal(libc::SIGTERM);
    assert_eq!(
        proc.wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    let standby = cluster.coords[1].addr().to_string();
    wait_for(Duration::from_secs(30), "the standby to lead", || {
        (leader_of(&cluster.coords[1]).as_deref() == Some(standby.as_str())).then_some(())
    });
    let early = cluster
        .pg
        .psql(&format!(
            "SELECT began_at < '{}'::timestamptz FROM helix_epochs WHERE epoch = 2",
            expiry.trim()
        ))
        .expect("query");
    assert_eq!(
        early.trim(),
        "t",
        "epoch 2 began only after the old lease ran out"
    );
    assert!(cluster.coords[0].log().contains("gave up the leader lease"));
}

#[test]
fn a_context_uploaded_to_the_old_leader_is_built_after_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = HaCluster::start(root.path(), 2, 0);
    let ctx = root.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .expect("write");
    std::fs::write(
        ctx.join("hello.txt"),
        "built from a context after failover\n",
    )
    .expect("write");
    // No agent yet: the build waits in the queue with its context on c1 (and in
    // the database).
    let tag = format!("{}/ha/ctx:v1", cluster.registry.addr);
    let id = cluster.coords[0]
        .admin(&[
            "build",
            "submit",
            "--context",
            path(&ctx),
            "--platform",
            "linux/amd64",
            "--tag",
            &tag,
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    cluster.coords[0].kill9();
    let standby = cluster.coords[1].addr().to_string();
    wait_for(Duration::from_secs(40), "the standby to lead", || {
        (leader_of(&cluster.coords[1]).as_deref() == Some(standby.as_str())).then_some(())
    });
    // An agent enrolled by the new leader fetches the context from it.
    let mut agent = Agent::new(root.path(), "late-agent");
    agent
        .join(cluster.coords[1].addr(), &cluster.coords[1].token(&[]))
        .ok();
    agent.start(&[
        "--coordinator",
        cluster.coords[1].addr(),
        "--insecure-registry",
        cluster.registry.addr.as_str(),
        "--platform",
        "linux/amd64",
    ]);
    let out = cluster.coords[1].admin(&["build", "wait", &id, "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("build wait --json: {out:?}"));
    assert_eq!(out.code, Some(0), "{v}\n{}", agent.log());
    assert_eq!(phase(&v), "Succeeded", "{v}");
    // Not a copy on c2's disk from before: it came out of the database.
    assert!(
        cluster.coords[1]
            .dir
            .join("contexts/sha256")
            .read_dir()
            .expect("dir")
            .count()
            == 1
    );
}
