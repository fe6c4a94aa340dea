//! Faults, for real: agents killed with SIGKILL mid-build, the coordinator killed and
//! restarted with builds in flight, network links cut between namespaces, drain.

use std::time::{Duration, Instant};

use helix_tests::netns::Lab;
use helix_tests::{
    find_agent, git_repo, job_digests, pids_with_cmdline, require_tool, sleepy_repo, wait_for,
    Agent, BuildCluster, Coordinator, Registry,
};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn job_state(build: &serde_json::Value) -> String {
    let state = &build["jobs"][0]["state"];
    match state.as_str() {
        Some(s) => s.to_string(),
        None => state
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default(),
    }
}

/// The agent id holding the build's first job, if it is assigned or running.
fn holder(build: &serde_json::Value) -> Option<String> {
    let state = &build["jobs"][0]["state"];
    state["Running"]["agent"]
        .as_str()
        .or(state["Assigned"]["agent"].as_str())
        .map(str::to_string)
}

/// Kill (by pid) builder processes left behind by an agent that was killed with
/// SIGKILL: what a reboot of that node would do.
fn reap(needle: &str) {
    for pid in pids_with_cmdline(needle) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with a pid read from /proc just now; no memory is involved.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

#[test]
fn a_job_of_an_agent_killed_mid_build_is_rebuilt_on_another_agent() {
    let root = tmp();
    let cluster = BuildCluster::start_opts(
        root.path(),
        &[("amd64-1", &["linux/amd64"]), ("amd64-2", &["linux/amd64"])],
        &[],
        &["--grace-period", "2s", "--idle-timeout", "3s"],
        &["--idle-timeout", "3s"],
    );
    let repo = sleepy_repo(&root.path().join("repo"), "killed-agent-marker", "6.25");
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("faults/kill:v1"), &[]);
    let first = wait_for(Duration::from_secs(60), "the job to run", || {
        let b = cluster.get(&id);
        let running = job_state(&b) == "Running" && !pids_with_cmdline("sleep 6.25").is_empty();
        running.then(|| holder(&b)).flatten()
    });
    let victim = cluster
        .agents
        .iter()
        .position(|a| a.id() == first)
        .expect("holder is one of ours");
    let mut agents = cluster.agents;
    agents[victim].proc().kill9();
    reap("sleep 6.25");
    let cluster = BuildCluster { agents, ..cluster };
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    let job = &done["jobs"][0];
    assert_eq!(job["attempt"], 2, "{job:#}");
    assert_eq!(job["history"].as_array().map(Vec::len), Some(1));
    assert_ne!(
        job["state"]["Succeeded"]["agent"].as_str(),
        Some(first.as_str()),
        "rebuilt on the other agent"
    );
    let index: serde_json::Value =
        serde_json::from_str(&cluster.registry.inspect_raw("faults/kill:v1").ok().stdout)
            .expect("index");
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "one index with one entry"
    );
}

#[test]
fn builds_in_flight_survive_a_coordinator_killed_and_restarted() {
    let root = tmp();
    let mut cluster = BuildCluster::start_opts(
        root.path(),
        &[
            ("a1", &["linux/amd64"]),
            ("a2", &["linux/amd64"]),
            ("a3", &["linux/amd64"]),
        ],
        &[],
        &[],
        &["--capacity", "2"],
    );
    let repo = git_repo(
        &root.path().join("repo"),
        &[
            ("Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", b"hi\n"),
        ],
    );
    let ids: Vec<String> = (0..20)
        .map(|i| {
            cluster.submit(
                &repo,
                "linux/amd64",
                &cluster.image(&format!("faults/many:v{i}")),
                &[],
            )
        })
        .collect();
    // Let some finish and some run, then crash the coordinator.
    wait_for(Duration::from_secs(60), "a few builds to finish", || {
        let list: serde_json::Value = serde_json::from_str(
            &cluster
                .coordinator
                .query(&["build", "list", "--json", "--limit", "50"])
                .ok()
                .stdout,
        )
        .ok()?;
        let done = list
            .as_array()?
            .iter()
            .filter(|b| b["state"] == "Succeeded")
            .count();
        (done >= 3).then_some(())
    });
    cluster.coordinator.kill9();
    std::thread::sleep(Duration::from_millis(500));
    cluster.coordinator.restart();
    for id in &ids {
        let (code, done) = cluster.wait(id);
        assert_eq!(code, Some(0), "build {id}: {done:#}");
        assert_eq!(done["state"], "Succeeded");
        let job = &done["jobs"][0];
        assert!(
            job["state"]["Succeeded"].is_object(),
            "exactly one terminal state: {job:#}"
        );
        assert_eq!(job_digests(&done).len(), 1);
    }
    let list: serde_json::Value = serde_json::from_str(
        &cluster
            .coordinator
            .admin(&["build", "list", "--json", "--limit", "50"])
            .ok()
            .stdout,
    )
    .expect("json");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(20),
        "no build lost or duplicated"
    );
}

#[test]
fn a_result_produced_while_the_coordinator_is_down_is_delivered_after_restart() {
    let root = tmp();
    let mut cluster = BuildCluster::start(root.path(), &[("amd64-1", &["linux/amd64"])]);
    let repo = sleepy_repo(&root.path().join("repo"), "while-down-marker", "3.75");
    let id = cluster.submit(&repo, "linux/amd64", &cluster.image("faults/down:v1"), &[]);
    wait_for(Duration::from_secs(60), "the job to run", || {
        (!pids_with_cmdline("sleep 3.75").is_empty()).then_some(())
    });
    // The RUN step's output reaches the coordinator's log before the crash.
    wait_for(Duration::from_secs(30), "the output in the log", || {
        let logs = cluster.coordinator.admin(&["build", "logs", &id]);
        logs.stdout
            .lines()
            .any(|l| l == "while-down-marker")
            .then_some(())
    });
    cluster.coordinator.kill9();
    // The build finishes on the agent while nobody can hear it.
    let results = cluster.agents[0].dir.join("results");
    wait_for(
        Duration::from_secs(60),
        "the agent to keep the finished result",
        || {
            let n = std::fs::read_dir(&results).ok()?.count();
            (n > 0 && pids_with_cmdline("sleep 3.75").is_empty()).then_some(())
        },
    );
    cluster.coordinator.restart();
    let (code, done) = cluster.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    let job = &done["jobs"][0];
    assert_eq!(job["attempt"], 1, "delivered, not rebuilt: {job:#}");
    assert_eq!(job["history"].as_array().map(Vec::len), Some(0));
    // After reconnecting the agent resends the whole log; the restarted coordinator
    // keeps what it had and stores the rest once. The result can arrive before the
    // log: wait for a line written after the kill (a log is sent in order, so its
    // resent start is stored by then).
    let logs = wait_for(Duration::from_secs(60), "the rest of the log", || {
        let logs = cluster.coordinator.query(&["build", "logs", &id]).stdout;
        logs.lines()
            .any(|l| l.starts_with("COMMIT helix-"))
            .then_some(logs)
    });
    let once = |line: &str| logs.lines().filter(|l| *l == line).count() == 1;
    assert!(
        once("while-down-marker") && once("STEP 1/3: FROM scratch"),
        "the output once, not again after the restart:\n{logs}"
    );
    assert!(!logs.contains("were lost"), "{logs}");
    // Once acknowledged, the agent forgets it.
    wait_for(
        Duration::from_secs(60),
        "the result to be acknowledged",
        || (std::fs::read_dir(&results).map(|d| d.count()).unwrap_or(0) == 0).then_some(()),
    );
}

#[test]
fn drain_lets_the_running_job_finish_and_gives_no_new_work() {
    let root = tmp();
    let cluster = BuildCluster::start_opts(
        root.path(),
        &[("amd64-1", &["linux/amd64"])],
        &[],
        &[],
        &["--capacity", "2"],
    );
    let repo = sleepy_repo(&root.path().join("repo"), "drain-marker", "4.5");
    let first = cluster.submit(&repo, "linux/amd64", &cluster.image("faults/drain:v1"), &[]);
    wait_for(Duration::from_secs(60), "the job to run", || {
        (!pids_with_cmdline("sleep 4.5").is_empty()).then_some(())
    });
    let started = Instant::now();
    let c = &cluster.coordinator;
    let drain = std::thread::scope(|scope| {
        let drain = scope.spawn(|| c.admin(&["agents", "drain", "amd64-1"]));
        c.wait_agent(
            "amd64-1",
            Duration::from_secs(60),
            "the agent to be draining",
            |a| a["state"] == "Draining",
        );
        let second = cluster.submit(&repo, "linux/amd64", &cluster.image("faults/drain:v2"), &[]);
        let human = c.admin(&["build", "get", &second]).ok().stdout;
        assert!(
            human.contains("waiting for an agent that can build linux/amd64"),
            "no new work while draining:\n{human}"
        );
        (drain.join().expect("drain thread"), second)
    });
    let (out, second) = drain;
    let out = out.ok();
    assert!(out.stdout.contains("drained"), "{out:?}");
    let (code, _) = cluster.wait(&first);
    assert_eq!(code, Some(0), "the running job finished");
    eprintln!("drain reported done after {:?}", started.elapsed());
    let second_state = cluster.get(&second);
    assert_eq!(second_state["state"], "Queued", "{second_state:#}");
    let agent = find_agent(&c.agents(), "amd64-1").cloned().expect("listed");
    assert_eq!(agent["state"], "Draining");
    assert_eq!(agent["running_jobs"], 0);
    c.admin(&["agents", "uncordon", "amd64-1"]).ok();
    let (code, _) = cluster.wait(&second);
    assert_eq!(code, Some(0));
}

/// A coordinator and registry in a hub namespace, agents in namespaces of their own.
struct NetCluster {
    lab: Lab,
    registry: Registry,
    coordinator: Coordinator,
    agents: Vec<Agent>,
}

impl NetCluster {
    fn start(
        root: &std::path::Path,
        hosts: usize,
        serve: &[&str],
        agent_flags: &[&str],
    ) -> NetCluster {
        require_tool("ip", "iproute2");
        let lab = Lab::new(hosts);
        let hub_ip = lab.host(1).hub_ip.clone();
        let registry = Registry::start_in(root, Some(&lab.hub), &hub_ip);
        let sans: Vec<String> = (1..=hosts).map(|n| lab.host(n).hub_ip.clone()).collect();
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let mut coordinator = Coordinator::init_in(root, "coord", "test", &lab.hub, &sans);
        let mut flags = vec![
            "--allow-file-repos",
            "--insecure-registry",
            registry.addr.as_str(),
        ];
        flags.extend_from_slice(serve);
        coordinator.start(&flags);
        let mut agents = Vec::new();
        for n in 1..=hosts {
            let mut agent = Agent::new(root, &format!("agent-{n}"));
            agent.ns = Some(lab.host(n).ns.clone());
            let addr = coordinator.addr_via(&lab.host(n).hub_ip);
            agent.join(&addr, &coordinator.token(&[])).ok();
            let mut f = vec![
                "--insecure-registry",
                registry.addr.as_str(),
                "--platform",
                "linux/amd64",
            ];
            f.extend_from_slice(agent_flags);
            agent.start(&f);
            agents.push(agent);
        }
        for a in &agents {
            wait_for(Duration::from_secs(60), "agents to connect", || {
                find_agent(&coordinator.agents(), &a.name)
                    .filter(|x| x["connected"] == true)
                    .map(|_| ())
            });
        }
        NetCluster {
            lab,
            registry,
            coordinator,
            agents,
        }
    }

    fn submit(&self, repo: &str, tag: &str) -> String {
        let image = format!("{}/{tag}", self.registry.addr);
        self.coordinator.submit(repo, "linux/amd64", &image, &[])
    }

    fn get(&self, id: &str) -> serde_json::Value {
        self.coordinator.build_get(id)
    }

    fn wait(&self, id: &str) -> (Option<i32>, serde_json::Value) {
        let out = self.coordinator.admin(&["build", "wait", id, "--json"]);
        (
            out.code,
            serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null),
        )
    }

    fn host_of(&self, agent_id: &str) -> usize {
        1 + self
            .agents
            .iter()
            .position(|a| a.id() == agent_id)
            .expect("one of ours")
    }
}

#[test]
fn a_short_network_cut_keeps_the_job_and_a_long_one_moves_it() {
    let root = tmp();
    let net = NetCluster::start(
        root.path(),
        2,
        &["--grace-period", "10s", "--idle-timeout", "2s"],
        &["--idle-timeout", "2s"],
    );

    // Shorter than the grace period: the job goes on and succeeds on the same agent.
    let repo = sleepy_repo(&root.path().join("repo1"), "short-cut-marker", "7.25");
    let id = net.submit(&repo, "faults/short:v1");
    let first = wait_for(Duration::from_secs(60), "the job to run", || {
        let b = net.get(&id);
        (job_state(&b) == "Running").then(|| holder(&b)).flatten()
    });
    let host = net.host_of(&first);
    net.lab.cut(host);
    std::thread::sleep(Duration::from_secs(3));
    net.lab.restore(host);
    let (code, done) = net.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    let job = &done["jobs"][0];
    assert_eq!(job["attempt"], 1, "not requeued: {job:#}");
    assert_eq!(
        job["state"]["Succeeded"]["agent"].as_str(),
        Some(first.as_str())
    );

    // Longer than it: requeued to the other agent; the first one's late report is ignored.
    let repo = sleepy_repo(&root.path().join("repo2"), "long-cut-marker", "6.75");
    let id = net.submit(&repo, "faults/long:v1");
    let first = wait_for(Duration::from_secs(60), "the job to run", || {
        let b = net.get(&id);
        (job_state(&b) == "Running").then(|| holder(&b)).flatten()
    });
    let host = net.host_of(&first);
    net.lab.cut(host);
    let (code, done) = net.wait(&id);
    assert_eq!(code, Some(0), "{done:#}");
    let job = &done["jobs"][0];
    assert_eq!(job["attempt"], 2, "requeued: {job:#}");
    let winner = job["state"]["Succeeded"]["agent"]
        .as_str()
        .expect("winner")
        .to_string();
    assert_ne!(winner, first);
    let digest_before = job_digests(&done);
    // Bring the first agent back: it reports its finished attempt 1, which is stale.
    net.lab.restore(host);
    let first_agent = &net.agents[host - 1];
    net.coordinator.wait_agent(
        &first_agent.name,
        Duration::from_secs(30),
        "the first agent to come back",
        |a| a["connected"] == true,
    );
    // Its result for attempt 1 (whatever it was) is reported, acknowledged and dropped.
    let results = first_agent.dir.join("results");
    wait_for(
        Duration::from_secs(60),
        "the first agent's late result to be acknowledged",
        || {
            let log = net.coordinator.log();
            let reported = log.contains("ignored a stale result")
                || log.contains("ignored a report for a job whose build is over");
            (reported && std::fs::read_dir(&results).map(|d| d.count()).unwrap_or(0) == 0)
                .then_some(())
        },
    );
    let after = net.get(&id);
    assert_eq!(after["jobs"][0]["attempt"], 2);
    assert_eq!(
        after["jobs"][0]["state"]["Succeeded"]["agent"].as_str(),
        Some(winner.as_str()),
        "the late report changed nothing"
    );
    assert_eq!(job_digests(&after), digest_before);
}
