//! Each check's rules, on a fake machine.

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use helix_protocol::AgentId;
use helix_transport::pki::ClusterCa;

use super::*;
use crate::datadir::Enrollment;

const GIB: u64 = 1 << 30;

struct Fake {
    builder: Result<String, &'static str>,
    space: std::io::Result<DiskSpace>,
    clock: ClockState,
    now: OffsetDateTime,
    reach: Result<Duration, String>,
    /// Addresses that do not answer (whatever `reach` says).
    down: Vec<String>,
    reached: Mutex<Vec<String>>,
}

impl Fake {
    fn healthy() -> Fake {
        Fake {
            builder: Ok("buildah version 1.39.3 (image-spec 1.1.0, runtime-spec 1.2.0)".into()),
            space: Ok(DiskSpace {
                available: 200 * GIB,
                total: 500 * GIB,
            }),
            clock: ClockState::Synchronized {
                max_error: Duration::from_millis(12),
            },
            now: OffsetDateTime::now_utc(),
            reach: Ok(Duration::from_millis(3)),
            down: Vec::new(),
            reached: Mutex::new(Vec::new()),
        }
    }
}

impl Machine for Fake {
    fn builder_version(
        &self,
        _kind: BuilderKind,
    ) -> BoxFuture<'_, Result<String, BuilderUnavailable>> {
        let reply = self
            .builder
            .clone()
            .map_err(|program| BuilderUnavailable::NotInstalled { program });
        Box::pin(async move { reply })
    }

    fn disk_space(&self, _path: &Path) -> std::io::Result<DiskSpace> {
        match &self.space {
            Ok(s) => Ok(*s),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }

    fn clock(&self) -> ClockState {
        self.clock.clone()
    }

    fn now(&self) -> OffsetDateTime {
        self.now
    }

    fn reach<'a>(&'a self, target: Reach<'a>) -> BoxFuture<'a, Result<Duration, String>> {
        let (what, addr) = match target {
            Reach::Agent { coordinator, .. } => (format!("agent {coordinator}"), coordinator),
            Reach::Join { coordinator, .. } => (format!("join {coordinator}"), coordinator),
        };
        self.reached.lock().expect("lock").push(what);
        let reply = if self.down.iter().any(|d| d == addr) {
            Err(format!("cannot connect to {addr}: timed out"))
        } else {
            self.reach.clone()
        };
        Box::pin(async move { reply })
    }
}

/// An enrolled data dir whose certificate is valid for `validity`.
fn enrolled(root: &Path, validity: Duration) -> DataDir {
    let ca = ClusterCa::generate("test").expect("ca");
    let dir = DataDir::new(root.join("data"));
    let id = AgentId::new_v4();
    let (cert, key) = crate::test_support::issue(&ca, id, validity);
    dir.create().expect("create");
    dir.save_ca(ca.cert_pem()).expect("ca");
    dir.save_enrollment(&Enrollment {
        agent_id: id,
        cluster: "test".into(),
        coordinator: "recorded.example:7443".into(),
        name: "node-1".into(),
    })
    .expect("record");
    AgentIdentity::new(cert, key, OffsetDateTime::now_utc())
        .expect("identity")
        .store(&dir.identity())
        .expect("store");
    dir
}

fn options(dir: DataDir) -> DoctorOptions {
    DoctorOptions {
        data_dir: dir,
        builder: BuilderKind::Buildah,
        coordinators: Vec::new(),
        token: JoinTokenConfig::default(),
    }
}

fn row<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[tokio::test]
async fn a_healthy_enrolled_node_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(enrolled(tmp.path(), Duration::from_secs(30 * 24 * 3600)));
    let fake = Fake::healthy();
    let checks = diagnose(&opts, &fake).await;
    let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "builder",
            "data dir",
            "storage",
            "enrolment",
            "certificate",
            "clock",
            "clock skew",
            "coordinator"
        ]
    );
    assert!(!failed(&checks), "{checks:?}");
    assert!(row(&checks, "builder")
        .detail
        .starts_with("buildah version"));
    assert_eq!(
        row(&checks, "storage").detail.split(" on ").next(),
        Some("200.0 GiB free of 500.0 GiB")
    );
    assert!(row(&checks, "enrolment")
        .detail
        .contains("(node-1) of cluster \"test\""));
    assert_eq!(row(&checks, "certificate").status, Status::Ok);
    assert_eq!(row(&checks, "clock skew").status, Status::Skip);
    assert!(row(&checks, "clock skew")
        .detail
        .contains("protocol version 1"));
    let coord = row(&checks, "coordinator");
    assert_eq!(coord.status, Status::Ok);
    assert!(
        coord.detail.starts_with("recorded.example:7443 reachable"),
        "{coord:?}"
    );
    assert_eq!(
        *fake.reached.lock().expect("lock"),
        ["agent recorded.example:7443"]
    );

    // The configured coordinator wins over the recorded one.
    let mut opts = opts;
    opts.coordinators = vec!["configured.example:7443".into()];
    let fake = Fake::healthy();
    diagnose(&opts, &fake).await;
    assert_eq!(
        *fake.reached.lock().expect("lock"),
        ["agent configured.example:7443"]
    );

    let text = table(&checks);
    assert!(text.starts_with("CHECK        STATUS  DETAIL\n"), "{text}");
    assert!(
        text.contains("\nclock skew   SKIP    not measured"),
        "{text}"
    );
    let json = json(&checks);
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"][0]["check"], "builder");
    assert_eq!(json["checks"][0]["status"], "ok");
}

#[tokio::test]
async fn storage_thresholds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(DataDir::new(tmp.path().join("not/yet")));
    for (available, want) in [
        (200 * GIB, Status::Ok),
        (10 * GIB, Status::Ok),
        (10 * GIB - 1, Status::Warn),
        (GIB, Status::Warn),
        (GIB - 1, Status::Fail),
        (0, Status::Fail),
    ] {
        let mut fake = Fake::healthy();
        fake.space = Ok(DiskSpace {
            available,
            total: 500 * GIB,
        });
        let checks = diagnose(&opts, &fake).await;
        let storage = row(&checks, "storage");
        assert_eq!(storage.status, want, "{available}: {storage:?}");
        // A data dir that does not exist yet is measured where it will be.
        assert!(
            storage.detail.contains(&tmp.path().display().to_string()),
            "{storage:?}"
        );
    }
    let mut fake = Fake::healthy();
    fake.space = Err(std::io::Error::other("no statvfs"));
    let checks = diagnose(&opts, &fake).await;
    assert_eq!(row(&checks, "storage").status, Status::Warn);
}

#[tokio::test]
async fn certificate_expiry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let day = Duration::from_secs(24 * 3600);
    let opts = options(enrolled(tmp.path(), 30 * day));
    for (days_later, want, needle) in [
        (0, Status::Ok, "valid until"),
        (26, Status::Ok, "valid until"),
        (28, Status::Warn, "renews it while connected"),
        (31, Status::Fail, "expired at"),
    ] {
        let mut fake = Fake::healthy();
        fake.now = OffsetDateTime::now_utc() + days_later * day;
        let checks = diagnose(&opts, &fake).await;
        let cert = row(&checks, "certificate");
        assert_eq!(cert.status, want, "{days_later} days later: {cert:?}");
        assert!(cert.detail.contains(needle), "{cert:?}");
        assert_eq!(failed(&checks), want == Status::Fail);
    }
}

#[tokio::test]
async fn failures_of_the_builder_clock_and_coordinator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(enrolled(tmp.path(), Duration::from_secs(30 * 24 * 3600)));
    let mut fake = Fake::healthy();
    fake.builder = Err("buildah");
    fake.clock = ClockState::Unsynchronized;
    fake.reach = Err("cannot connect to recorded.example:7443: timed out".into());
    let checks = diagnose(&opts, &fake).await;
    let builder = row(&checks, "builder");
    assert_eq!(builder.status, Status::Fail);
    assert!(
        builder.detail.contains("apt-get install buildah"),
        "{builder:?}"
    );
    let clock = row(&checks, "clock");
    assert_eq!(clock.status, Status::Warn);
    assert!(clock.detail.contains("not synchronized"), "{clock:?}");
    assert_eq!(row(&checks, "coordinator").status, Status::Fail);
    assert!(failed(&checks));
    assert_eq!(json(&checks)["ok"], false);
}

#[tokio::test]
async fn before_enrolment_the_token_is_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("test").expect("ca");
    let token_file = tmp.path().join("join-token");
    std::fs::write(
        &token_file,
        JoinToken::new(&ca.fingerprint(), [1; 16]).to_string(),
    )
    .expect("write");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut opts = options(DataDir::new(tmp.path().join("data")));
    opts.coordinators = vec!["coord.example:7443".into()];
    opts.token.file = Some(token_file.clone());

    let fake = Fake::healthy();
    let checks = diagnose(&opts, &fake).await;
    assert!(!failed(&checks), "{checks:?}");
    assert!(row(&checks, "data dir")
        .detail
        .contains("does not exist yet"));
    let enrolment = row(&checks, "enrolment");
    assert!(
        enrolment.detail.contains(&format!(
            "enrols with join-token-file {}",
            token_file.display()
        )),
        "{enrolment:?}"
    );
    assert_eq!(row(&checks, "certificate").status, Status::Skip);
    assert!(row(&checks, "coordinator")
        .detail
        .contains("the join token pins"));
    assert_eq!(
        *fake.reached.lock().expect("lock"),
        ["join coord.example:7443"]
    );
    assert!(token_file.exists(), "doctor never consumes the token");

    // A token file others can read fails, with the fix.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let checks = diagnose(&opts, &Fake::healthy()).await;
    let enrolment = row(&checks, "enrolment");
    assert_eq!(enrolment.status, Status::Fail);
    assert!(enrolment.detail.contains("chmod 600"), "{enrolment:?}");
    assert_eq!(row(&checks, "coordinator").status, Status::Skip);

    // No token, no coordinator.
    let opts = options(DataDir::new(tmp.path().join("data")));
    let checks = diagnose(&opts, &Fake::healthy()).await;
    assert_eq!(row(&checks, "enrolment").status, Status::Fail);
    assert_eq!(row(&checks, "coordinator").status, Status::Fail);
}

#[tokio::test]
async fn every_coordinator_is_checked_and_one_answering_is_enough() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut opts = options(enrolled(tmp.path(), Duration::from_secs(30 * 24 * 3600)));
    opts.coordinators = vec!["a.example:7443".into(), "b.example:7443".into()];
    // The leader listed a third one earlier.
    opts.data_dir
        .save_coordinators(&["b.example:7443".into(), "c.example:7443".into()])
        .expect("save");
    let coordinator_rows = |checks: &[Check]| -> Vec<(Status, String)> {
        checks
            .iter()
            .filter(|c| c.check == "coordinator")
            .map(|c| (c.status, c.detail.clone()))
            .collect()
    };

    let fake = Fake::healthy();
    let checks = diagnose(&opts, &fake).await;
    assert!(!failed(&checks), "{checks:?}");
    assert_eq!(
        *fake.reached.lock().expect("lock"),
        [
            "agent a.example:7443",
            "agent b.example:7443",
            "agent c.example:7443"
        ]
    );
    let rows = coordinator_rows(&checks);
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0].1.starts_with("a.example:7443 reachable"),
        "{rows:?}"
    );
    assert!(
        rows[2]
            .1
            .starts_with("c.example:7443 (learned from the cluster) reachable"),
        "{rows:?}"
    );

    // One down: a warning while another answers.
    let mut fake = Fake::healthy();
    fake.down = vec!["a.example:7443".into()];
    let checks = diagnose(&opts, &fake).await;
    assert!(!failed(&checks), "{checks:?}");
    let rows = coordinator_rows(&checks);
    assert_eq!(rows[0].0, Status::Warn, "{rows:?}");
    assert!(rows[0].1.contains("timed out"), "{rows:?}");
    assert_eq!((rows[1].0, rows[2].0), (Status::Ok, Status::Ok));

    // All down: each fails.
    let mut fake = Fake::healthy();
    fake.reach = Err("timed out".into());
    let checks = diagnose(&opts, &fake).await;
    assert!(failed(&checks));
    assert!(coordinator_rows(&checks)
        .iter()
        .all(|(status, _)| *status == Status::Fail));
}

#[test]
fn this_machine_answers() {
    // The real system calls work here (values depend on the host).
    let space = RealMachine.disk_space(Path::new("/")).expect("statvfs");
    assert!(space.total >= space.available);
    let _ = RealMachine.clock();
}
