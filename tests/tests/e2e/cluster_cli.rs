//! The command line of a cluster of coordinators, with the embedded store: `init
//! --ca-from` (a second data directory sharing the first one's CA), several
//! `--coordinator` addresses, `cluster status`, and the refusals of the store and lease
//! options.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helix_tests::{bin, free_port, path, run, s, wait_for, Coordinator, Proc, Ran, CMD_TIMEOUT};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn coordinator(args: &[&str], envs: &[(&str, &str)]) -> Ran {
    run(&bin("helix-coordinator"), &s(args), envs, CMD_TIMEOUT)
}

/// What an operator carries from the first coordinator's host to the next one's over
/// a secure channel: the CA certificate and key, and the admin bundle (for the
/// cluster name), kept 0600.
fn carry_ca(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("mkdir");
    for name in ["ca.pem", "ca.key", "admin.pem"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
        std::fs::set_permissions(to.join(name), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
}

/// `serve` on an ephemeral loopback port from an already initialized `dir`; returns
/// the process and its address.
fn serve(dir: &Path, log: &Path) -> (Proc, String) {
    let args = s(&[
        "serve",
        "--data-dir",
        path(dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
    ]);
    let proc = Proc::spawn("coordinator-2", &bin("helix-coordinator"), &args, log, &[]);
    let addr = wait_for(Duration::from_secs(60), "the coordinator to listen", || {
        let text = std::fs::read_to_string(log).ok()?;
        helix_tests::listening_addr(&text)
    });
    (proc, addr)
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_coordinator_initialized_from_anothers_ca_accepts_its_admins_and_vice_versa() {
    let root = tmp();
    let mut first = Coordinator::init(root.path(), "first", "prod");
    first.start(&[]);
    let carried = root.path().join("carried");
    carry_ca(&first.dir, &carried);

    let second = root.path().join("second");
    let out = coordinator(
        &[
            "init",
            "--data-dir",
            path(&second),
            "--ca-from",
            path(&carried),
            "--san",
            "coord-2.example.com",
        ],
        &[],
    )
    .ok();
    assert!(
        out.stderr.contains("Initialized cluster \"prod\"") && out.stderr.contains("shared"),
        "{}",
        out.stderr
    );
    assert_eq!(read(second.join("ca.pem")), read(first.dir.join("ca.pem")));
    assert_ne!(
        read(second.join("server.pem")),
        read(first.dir.join("server.pem"))
    );
    let (_proc, second_addr) = serve(&second, &root.path().join("second.log"));

    // The first coordinator's admin bundle trusts the second's server certificate
    // (it chains to the shared CA), and the second accepts the bundle.
    let listed = coordinator(
        &[
            "agents",
            "list",
            "--json",
            "--coordinator",
            &second_addr,
            "--admin-cert",
            path(&first.admin_bundle()),
        ],
        &[],
    )
    .ok();
    assert_eq!(listed.stdout.trim(), "[]");
    // And the other way round.
    coordinator(
        &[
            "agents",
            "list",
            "--coordinator",
            first.addr(),
            "--admin-cert",
            path(&second.join("admin.pem")),
        ],
        &[],
    )
    .ok();

    // `cluster status` of a coordinator on the embedded store: no lease, no epoch.
    let status = first.admin(&["cluster", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(v["store"], "redb", "{v}");
    assert_eq!(v["epoch"], 0, "{v}");
    let text = first.admin(&["cluster", "status"]).ok();
    assert!(text.stdout.contains("redb"), "{}", text.stdout);
}

#[test]
fn several_coordinator_addresses_are_tried_in_order() {
    let root = tmp();
    let mut c = Coordinator::init(root.path(), "coord", "test");
    c.start(&[]);
    let bundle = c.admin_bundle();
    // Nothing listens on the first address; the list comes from the environment.
    let dead = format!("127.0.0.1:{}", free_port());
    let list = format!("{dead},{}", c.addr());
    let out = coordinator(
        &["agents", "list", "--json", "--admin-cert", path(&bundle)],
        &[("HELIX_COORDINATOR", &list)],
    )
    .ok();
    assert_eq!(out.stdout.trim(), "[]");

    // None reachable: the error names each address.
    let other = format!("127.0.0.1:{}", free_port());
    let out = coordinator(
        &[
            "agents",
            "list",
            "--admin-cert",
            path(&bundle),
            "--coordinator",
            &dead,
            "--coordinator",
            &other,
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&dead) && out.stderr.contains(&other),
        "{}",
        out.stderr
    );
}

#[test]
fn init_ca_from_refuses_a_ca_key_others_can_read() {
    let root = tmp();
    let first = Coordinator::init(root.path(), "first", "prod");
    let carried = root.path().join("carried");
    carry_ca(&first.dir, &carried);
    std::fs::set_permissions(
        carried.join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let second = root.path().join("second");
    coordinator(
        &[
            "init",
            "--data-dir",
            path(&second),
            "--ca-from",
            path(&carried),
        ],
        &[],
    )
    .fails_with(2, "chmod 600");
    assert!(!second.join("ca.key").exists());

    // A --cluster that is not the CA's cluster is refused too.
    std::fs::set_permissions(
        carried.join("ca.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    coordinator(
        &[
            "init",
            "--data-dir",
            path(&second),
            "--ca-from",
            path(&carried),
            "--cluster",
            "staging",
        ],
        &[],
    )
    .fails_with(2, "\"prod\"");
}

#[test]
fn serve_refuses_bad_lease_timings_and_an_open_password_file_before_starting() {
    let root = tmp();
    let c = Coordinator::init(root.path(), "coord", "test");
    let data = path(&c.dir).to_string();
    coordinator(
        &[
            "serve",
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--lease-ttl",
            "10s",
            "--lease-renew",
            "5s",
        ],
        &[],
    )
    .fails_with(2, "less than half");

    let pw = root.path().join("store-password");
    std::fs::write(&pw, "s3cret\n").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = coordinator(
        &[
            "serve",
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres://helix@127.0.0.1:1/helix",
            "--store-password-file",
            path(&pw),
        ],
        &[],
    )
    .fails_with(2, "chmod 600");
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);

    // `config check` shows the store URL without its password.
    let file = root.path().join("coordinator.toml");
    std::fs::write(
        &file,
        "store = \"postgres://helix:s3cret@db.example.com/helix\"\nadvertise = \"coord-1.example.com:7443\"\n",
    )
    .expect("write");
    let out = coordinator(&["config", "check", path(&file)], &[]).ok();
    assert!(!out.stdout.contains("s3cret"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("postgres://helix:***@db.example.com/helix"),
        "{}",
        out.stdout
    );
}
