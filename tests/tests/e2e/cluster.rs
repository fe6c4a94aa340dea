//! The secure cluster: init, join tokens, mutual TLS, roles, revocation, restart and
//! certificate renewal, with real processes.

use std::time::Duration;

use helix_protocol::wire::{close, AdminRequest, RejectCode};
use helix_tests::{find_agent, wait_for, Agent, Coordinator};
use helix_transport::pki;

use crate::raw::{self, admin_hello, agent_hello, frame, send_raw, Creds};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn ca_pin(c: &Coordinator) -> String {
    let ca = std::fs::read_to_string(c.dir.join("ca.pem")).expect("ca.pem");
    let der = &pki_der(&ca);
    pki::sha256_fingerprint(der)
}

fn pki_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

/// A coordinator with one joined, running agent.
fn cluster_with_agent(
    root: &std::path::Path,
    serve: &[&str],
    agent_flags: &[&str],
) -> (Coordinator, Agent) {
    let mut c = Coordinator::init(root, "coord", "test");
    c.start(serve);
    let token = c.token(&[]);
    let mut a = Agent::new(root, "agent-1");
    a.join(c.addr(), &token).ok();
    a.start(agent_flags);
    c.wait_agent(
        "agent-1",
        Duration::from_secs(60),
        "the agent to connect",
        |a| a["connected"] == true,
    );
    (c, a)
}

#[test]
fn an_agent_enrols_and_is_listed_with_its_platforms() {
    let root = tmp();
    let mut c = Coordinator::init(root.path(), "coord", "test");
    c.start(&[]);
    let out = c
        .admin(&["token", "create", "--ttl", "10m", "--uses", "1"])
        .ok();
    let token = out.stdout.trim();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "only the token on stdout: {:?}",
        out.stdout
    );
    assert!(token.starts_with("helix1."), "{token}");

    let mut a = Agent::new(root.path(), "agent-1");
    a.join(c.addr(), token).ok();
    a.start(&[
        "--platform",
        "linux/arm64/v8",
        "--platform",
        "linux/x86_64",
        "--capacity",
        "3",
        "--label",
        "rack=a1",
    ]);
    let started = std::time::Instant::now();
    let agent = c.wait_agent(
        "agent-1",
        Duration::from_secs(60),
        "the agent in agents list",
        |a| a["connected"] == true,
    );
    eprintln!("agent listed after {:?}", started.elapsed());
    assert_eq!(
        agent["platforms"],
        serde_json::json!(["linux/arm64", "linux/amd64"]),
        "normalized: {agent}"
    );
    assert_eq!(agent["capacity"], 3);
    assert_eq!(agent["labels"]["rack"], "a1");
    assert_eq!(agent["state"], "Ready");
    assert_eq!(agent["id"], a.id());

    // Cordon and uncordon by name; the table names the agent.
    c.admin(&["agents", "cordon", "agent-1"]).ok();
    assert_eq!(
        find_agent(&c.agents(), "agent-1").expect("listed")["state"],
        "Cordoned"
    );
    c.admin(&["agents", "uncordon", &a.id()[..8]]).ok();
    let table = c.admin(&["agents", "list"]).ok().stdout;
    assert!(
        table.contains("agent-1")
            && table.contains("ready")
            && table.contains("linux/arm64,linux/amd64"),
        "{table}"
    );
    c.admin(&["agents", "cordon", "no-such-agent"])
        .fails_with(2, "no agent has the id or name");
}

#[test]
fn bad_tokens_are_refused_and_the_coordinator_keeps_serving() {
    let root = tmp();
    let mut c = Coordinator::init(root.path(), "coord", "test");
    c.start(&[]);

    // Expired.
    let expired = c.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let a = Agent::new(root.path(), "expired");
    a.join(c.addr(), &expired)
        .fails_with(1, "the join token expired");
    assert!(
        !a.dir.join("identity.pem").exists(),
        "nothing kept from a refused join"
    );

    // Single use, used twice.
    let once = c.token(&[]);
    Agent::new(root.path(), "first").join(c.addr(), &once).ok();
    Agent::new(root.path(), "second")
        .join(c.addr(), &once)
        .fails_with(1, "the join token has been used up");

    // A token whose CA hash is not this coordinator's CA: the agent refuses the server.
    let other = Coordinator::init(root.path(), "other", "other");
    let good = c.token(&[]);
    let forged = good.replace(&ca_pin(&c), &ca_pin(&other));
    assert_ne!(forged, good);
    Agent::new(root.path(), "pinned")
        .join(c.addr(), &forged)
        .fails_with(1, "does not match the join token");

    // Malformed.
    Agent::new(root.path(), "garbled")
        .join(c.addr(), "helix1.nope")
        .fails_with(2, "malformed join token");

    // Still serving: the one good enrolment is listed and a new join works.
    let agents = c.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(find_agent(&agents, "first").is_some());
    Agent::new(root.path(), "third").join(c.addr(), &good).ok();
}

#[test]
fn certificates_from_another_ca_or_none_at_all_are_refused() {
    let root = tmp();
    let (c, agent) = cluster_with_agent(root.path(), &[], &[]);
    let pin = ca_pin(&c);

    // An admin bundle from another cluster's CA: the TLS handshake fails.
    let other = Coordinator::init(root.path(), "other", "test");
    let bundle = other.admin_bundle();
    let out = c.admin(&[
        "agents",
        "list",
        "--admin-cert",
        bundle.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot connect") || out.stderr.contains("lost the connection"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("certificate"),
        "names the certificate problem: {}",
        out.stderr
    );

    let rt = raw::runtime();
    // No client certificate, agent protocol.
    let answer = rt.block_on(send_raw(c.addr(), None, &pin, frame(&agent_hello(1))));
    let (code, reason) = answer.rejected.expect("a refusal frame");
    assert_eq!(code, RejectCode::Unauthenticated);
    assert!(
        reason.contains("client certificate is required for the agent protocol"),
        "{reason}"
    );
    assert!(
        answer
            .closed
            .contains(&format!("code {}", close::UNAUTHORIZED)),
        "{}",
        answer.closed
    );
    // No client certificate, admin protocol.
    let answer = rt.block_on(send_raw(c.addr(), None, &pin, frame(&admin_hello())));
    let (code, reason) = answer.rejected.expect("a refusal frame");
    assert_eq!(code, RejectCode::Unauthenticated);
    assert!(
        reason.contains("client certificate is required for the admin protocol"),
        "{reason}"
    );

    // Still serving, and the real agent is still connected.
    let listed = c.agents();
    assert_eq!(
        find_agent(&listed, &agent.name).expect("listed")["connected"],
        true
    );
}

#[test]
fn wrong_roles_versions_and_bad_frames_are_refused() {
    let root = tmp();
    let (c, agent) = cluster_with_agent(root.path(), &[], &[]);
    let pin = ca_pin(&c);
    let agent_creds = Creds::agent(&agent.dir);
    let admin_creds = Creds::admin(&c.admin_bundle());
    let rt = raw::runtime();

    // (what, credentials, bytes, expected code, expected reason, expected close code)
    type Case<'a> = (&'a str, &'a Creds, Vec<u8>, RejectCode, &'a str, u32);
    let cases: Vec<Case> = vec![
        (
            "agent certificate sending an admin request",
            &agent_creds,
            frame(&AdminRequest::ListAgents),
            RejectCode::WrongRole,
            "an agent certificate can only speak the agent protocol",
            close::UNAUTHORIZED,
        ),
        (
            "admin certificate saying agent Hello",
            &admin_creds,
            frame(&agent_hello(1)),
            RejectCode::WrongRole,
            "an admin certificate can only speak the admin protocol",
            close::UNAUTHORIZED,
        ),
        (
            "Hello with another protocol version",
            &agent_creds,
            frame(&agent_hello(99)),
            RejectCode::VersionMismatch,
            "the agent speaks protocol version 99, this coordinator speaks 1",
            close::VERSION_MISMATCH,
        ),
        (
            "length prefix over the limit",
            &agent_creds,
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            RejectCode::BadRequest,
            "exceeds the limit of 16777216 bytes",
            close::PROTOCOL_ERROR,
        ),
        (
            "a frame of garbage",
            &admin_creds,
            vec![0, 0, 0, 6, 0xde, 0xad, 0xbe, 0xef, 0x99, 0x42],
            RejectCode::BadRequest,
            "the first frame is not a Helix message",
            close::PROTOCOL_ERROR,
        ),
    ];
    for (what, creds, bytes, want_code, want_reason, want_close) in cases {
        let answer = rt.block_on(send_raw(c.addr(), Some(creds), &pin, bytes));
        let (code, reason) = answer
            .rejected
            .unwrap_or_else(|| panic!("{what}: no refusal frame ({})", answer.closed));
        assert_eq!(code, want_code, "{what}: {reason}");
        assert!(reason.contains(want_reason), "{what}: {reason}");
        assert!(
            answer.closed.contains(&format!("code {want_close}")),
            "{what}: {}",
            answer.closed
        );
        eprintln!("{what}: refused with {code:?}: {reason}");
    }

    // The coordinator still serves, and the real agent was not disturbed by a raw
    // connection that used its certificate.
    c.wait_agent(
        &agent.name,
        Duration::from_secs(60),
        "the agent to be connected",
        |a| a["connected"] == true,
    );
}

#[test]
fn a_revoked_agent_is_cut_off_and_refused() {
    let root = tmp();
    let (c, mut agent) = cluster_with_agent(root.path(), &[], &[]);
    c.admin(&["agents", "revoke", "agent-1"]).ok();
    let status = agent
        .proc()
        .wait_exit(Duration::from_secs(30))
        .expect("the revoked agent exits");
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    assert!(agent.log().contains("revoked"), "{}", agent.log());
    let listed = c.agents();
    let row = find_agent(&listed, "agent-1").expect("still listed");
    assert_eq!(row["state"], "Revoked");
    assert_eq!(row["connected"], false);

    // Started again, it is refused at connect.
    agent.start(&[]);
    let status = agent
        .proc()
        .wait_exit(Duration::from_secs(30))
        .expect("refused at connect");
    assert_eq!(status.code(), Some(1));
    assert!(
        agent.log().contains("this agent has been revoked"),
        "{}",
        agent.log()
    );
    // An uncordon cannot bring it back.
    c.admin(&["agents", "uncordon", "agent-1"])
        .fails_with(2, "revoked");
}

#[test]
fn agents_come_back_after_the_coordinator_is_killed_and_restarted() {
    let root = tmp();
    let (mut c, mut agent) = cluster_with_agent(root.path(), &[], &[]);
    let pid = agent.proc().pid();
    c.kill9();
    std::thread::sleep(Duration::from_millis(500));
    c.restart();
    let restarted = std::time::Instant::now();
    c.wait_agent(
        "agent-1",
        Duration::from_secs(30),
        "the agent to reconnect after the restart",
        |a| a["connected"] == true,
    );
    eprintln!("agent back {:?} after the restart", restarted.elapsed());
    assert!(agent.proc().is_running(), "the agent was not restarted");
    assert_eq!(agent.proc().pid(), pid);
}

#[test]
fn agent_certificates_are_renewed_before_they_expire() {
    let root = tmp();
    let (c, agent) = cluster_with_agent(root.path(), &["--agent-cert-ttl", "9s"], &[]);
    let read_cert = || {
        let creds = Creds::agent(&agent.dir);
        (
            creds.cert_pem.clone(),
            pki::cert_not_after(&creds.cert_pem).expect("not after"),
        )
    };
    let (first, first_expiry) = read_cert();
    let (renewed, renewed_expiry) = wait_for(
        Duration::from_secs(20),
        "the certificate to be renewed",
        || {
            let (pem, expiry) = read_cert();
            (pem != first).then_some((pem, expiry))
        },
    );
    assert!(
        renewed_expiry > first_expiry,
        "{renewed_expiry} > {first_expiry}"
    );
    assert_ne!(
        Creds::agent(&agent.dir).key_pem,
        "",
        "a key is stored with the renewed certificate"
    );
    let _ = renewed;
    // Past the first certificate's expiry the agent still connects with the new one:
    // kill its session by restarting the coordinator and watch it come back.
    std::thread::sleep(Duration::from_secs(2));
    c.wait_agent(
        "agent-1",
        Duration::from_secs(30),
        "the agent to stay connected",
        |a| a["connected"] == true,
    );
}

#[test]
fn an_agent_that_stops_reading_is_disconnected_not_silently_starved() {
    use helix_protocol::wire::{AgentToCoordinator, PROTOCOL_VERSION};
    use helix_transport::{connect, framed, tls};

    let root = tmp();
    let mut c = Coordinator::init(root.path(), "coord", "test");
    c.start(&["--allow-file-repos"]);
    let a = Agent::new(root.path(), "slow");
    a.join(c.addr(), &c.token(&[])).ok();
    let creds = Creds::agent(&a.dir);
    // Twenty platforms a build may ask for at once, so a few builds make many jobs.
    let arches = [
        "386", "amd64", "arm64", "ppc64le", "s390x", "riscv64", "mips64le", "mips64", "mipsle",
        "mips", "ppc64", "loong64", "sparc64", "arm64be", "armbe", "ppc", "riscv", "s390", "sparc",
        "wasm",
    ];
    let platforms: Vec<String> = arches.iter().map(|a| format!("linux/{a}")).collect();
    let repo = helix_tests::git_repo(
        &root.path().join("repo"),
        &[("Dockerfile", b"FROM scratch\n")],
    );

    // An agent that says Hello for all of them with room for 1,000 jobs, then reads
    // nothing: its 2 KiB stream window fills after a few assignments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (endpoint, conn, _streams) = rt.block_on(async {
        let client = tls::client_config(&creds.ca_pem, &creds.cert_pem, &creds.key_pem)
            .expect("client config");
        let mut quic =
            tls::quinn_client_config(client, Duration::from_secs(30), Duration::from_secs(2))
                .expect("quic");
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(quinn::VarInt::from_u32(2048))
            .keep_alive_interval(Some(Duration::from_secs(2)))
            .max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("idle")));
        quic.transport_config(std::sync::Arc::new(transport));
        let (sock, _) = connect::resolve(c.addr()).await.expect("resolve");
        let endpoint = connect::client_endpoint(sock).expect("endpoint");
        let conn = connect::connect(&endpoint, c.addr(), quic)
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("stream");
        let hello = AgentToCoordinator::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "test".into(),
            platforms: platforms
                .iter()
                .map(|p| p.parse().expect("platform"))
                .collect(),
            capacity: 1000,
            labels: Default::default(),
            builder: "buildah".into(),
            held: vec![],
        };
        framed::write_frame(&mut send, &hello).await.expect("hello");
        (endpoint, conn, (send, recv))
    });
    c.wait_agent(
        "slow",
        Duration::from_secs(60),
        "the raw agent to be connected",
        |a| a["connected"] == true,
    );
    // 15 builds x 20 platforms: 300 assignments for an agent that reads none.
    let all = platforms.join(",");
    for i in 0..15 {
        c.submit(&repo, &all, &format!("127.0.0.1:1/slow/app:v{i}"), &[]);
    }
    let closed = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), conn.closed())
            .await
            .map(|e| connect::describe_close(&e))
    });
    let closed = closed.expect("the coordinator closes the connection");
    assert!(
        closed.contains(&format!("code {}", close::TOO_SLOW)),
        "closed for being too slow, not starved in silence: {closed}"
    );
    assert!(
        c.log()
            .contains("agent session queue full; closing the session"),
        "{}",
        c.log()
    );
    c.wait_agent(
        "slow",
        Duration::from_secs(30),
        "the agent to show as disconnected",
        |a| a["connected"] == false,
    );
    endpoint.close(0u32.into(), b"");
}
