//! Enrolment from `run` with a fake join: token sources and their refusals, retries,
//! and what happens to the token file.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_protocol::wire::RejectCode;
use helix_protocol::AgentId;
use helix_transport::framed::StreamError;
use helix_transport::pki::ClusterCa;
use time::OffsetDateTime;

use super::*;
use crate::identity::AgentIdentity;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    token_file: PathBuf,
    token: String,
    ca: ClusterCa,
}

fn setup(mode: u32) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("test").expect("ca");
    let token = JoinToken::new(&ca.fingerprint(), [7; 16]).to_string();
    let token_file = tmp.path().join("join-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    Setup {
        dir: DataDir::new(tmp.path().join("data")),
        _tmp: tmp,
        token_file,
        token,
        ca,
    }
}

fn options(s: &Setup) -> EnrolOptions {
    EnrolOptions {
        coordinators: vec!["coord.example:7443".into()],
        name: Some("node-1".into()),
        token: JoinTokenConfig {
            file: Some(s.token_file.clone()),
            env: None,
        },
    }
}

/// What a successful join leaves: the identity, the CA and the record.
fn store_identity(dir: &DataDir, ca: &ClusterCa, name: &str) -> Enrollment {
    let id = AgentId::new_v4();
    let (cert, key) = crate::test_support::issue(ca, id, Duration::from_secs(3600));
    let enrollment = Enrollment {
        agent_id: id,
        cluster: "test".into(),
        coordinator: "coord.example:7443".into(),
        name: name.into(),
    };
    dir.create().expect("create");
    dir.save_ca(ca.cert_pem()).expect("ca");
    dir.save_enrollment(&enrollment).expect("record");
    AgentIdentity::new(cert, key, OffsetDateTime::now_utc())
        .expect("identity")
        .store(&dir.identity())
        .expect("store");
    enrollment
}

/// A join that answers from `replies` in turn, recording what it was asked.
#[derive(Clone)]
struct FakeJoin {
    ca: Arc<ClusterCa>,
    replies: Arc<Mutex<Vec<Option<JoinError>>>>,
    calls: Arc<Mutex<Vec<JoinOptions>>>,
}

impl FakeJoin {
    /// `None` in `replies` is a successful join.
    fn new(ca: &ClusterCa, replies: Vec<Option<JoinError>>) -> FakeJoin {
        FakeJoin {
            ca: Arc::new(ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("ca")),
            replies: Arc::new(Mutex::new(replies)),
            calls: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn calls(&self) -> Vec<JoinOptions> {
        self.calls.lock().expect("lock").clone()
    }

    fn join(
        &self,
    ) -> impl FnMut(
        JoinOptions,
    )
        -> std::pin::Pin<Box<dyn Future<Output = Result<Enrollment, JoinError>> + Send>> {
        let this = self.clone();
        move |opts: JoinOptions| {
            let this = this.clone();
            Box::pin(async move {
                this.calls.lock().expect("lock").push(opts.clone());
                let reply = {
                    let mut replies = this.replies.lock().expect("lock");
                    if replies.is_empty() {
                        None
                    } else {
                        replies.remove(0)
                    }
                };
                match reply {
                    Some(e) => Err(e),
                    None => Ok(store_identity(&opts.data_dir, &this.ca, &opts.name)),
                }
            })
        }
    }
}

async fn enrol(
    s: &Setup,
    opts: &EnrolOptions,
    fake: &FakeJoin,
) -> Result<Option<Enrolled>, EnrolError> {
    enrol_if_needed(&s.dir, opts, &CancellationToken::new(), |_| {}, fake.join()).await
}

#[tokio::test]
async fn enrols_with_the_token_file_then_deletes_it() {
    let s = setup(0o600);
    let fake = FakeJoin::new(&s.ca, vec![]);
    let mut attempts = Vec::new();
    let done = enrol_if_needed(
        &s.dir,
        &options(&s),
        &CancellationToken::new(),
        |n| attempts.push(n),
        fake.join(),
    )
    .await
    .expect("enrolled")
    .expect("not shut down");
    let Enrolled::Now {
        enrollment,
        token_file_deleted,
    } = done
    else {
        panic!("expected an enrolment, got {done:?}");
    };
    assert!(token_file_deleted);
    assert!(!s.token_file.exists(), "the token file is deleted");
    assert_eq!(enrollment.name, "node-1");
    assert_eq!(attempts, [1]);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].coordinators, ["coord.example:7443"]);
    assert_eq!(calls[0].token.to_string(), s.token);
    assert!(s.dir.is_joined());

    // The next start finds the identity: no join, nothing to delete.
    let again = enrol(&s, &options(&s), &fake).await.expect("ok");
    assert_eq!(again, Some(Enrolled::Already));
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn a_token_file_others_can_read_is_refused_with_the_chmod_hint() {
    for mode in [0o644, 0o640, 0o604] {
        let s = setup(mode);
        let fake = FakeJoin::new(&s.ca, vec![]);
        let err = enrol(&s, &options(&s), &fake).await.expect_err("too open");
        let text = err.to_string();
        assert!(
            matches!(err, EnrolError::TokenFile(FileError::TooOpen { .. })),
            "{text}"
        );
        assert!(
            text.contains(&format!("chmod 600 {}", s.token_file.display())),
            "{text}"
        );
        assert!(!text.contains(&s.token), "the token is never shown: {text}");
        assert!(err.is_usage());
        assert!(s.token_file.exists(), "a refused file is left alone");
        assert!(fake.calls().is_empty());
    }
    // 0400 is stricter than 0600: fine.
    let s = setup(0o400);
    let fake = FakeJoin::new(&s.ca, vec![]);
    enrol(&s, &options(&s), &fake).await.expect("0400 is fine");
}

#[tokio::test]
async fn refusals_before_any_join() {
    let s = setup(0o600);
    let fake = FakeJoin::new(&s.ca, vec![]);
    type Case = (&'static str, Box<dyn Fn(&mut EnrolOptions)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "no token at all",
            Box::new(|o| o.token = JoinTokenConfig::default()),
            "holds no agent identity and no join token is configured",
        ),
        (
            "a token file that is not there",
            Box::new(|o| o.token.file = Some("/nonexistent/join-token".into())),
            "join-token-file /nonexistent/join-token does not exist",
        ),
        (
            "no coordinator",
            Box::new(|o| o.coordinators.clear()),
            "set coordinator = \"HOST:PORT\"",
        ),
        (
            "a malformed token in the environment",
            Box::new(|o| o.token.env = Some("not-a-token".into())),
            "invalid join token in HELIX_JOIN_TOKEN",
        ),
    ];
    for (case, change, want) in cases {
        let mut opts = options(&s);
        change(&mut opts);
        let err = enrol(&s, &opts, &fake).await.expect_err(case);
        assert!(err.to_string().contains(want), "{case}: {err}");
        assert!(err.is_usage(), "{case}");
    }
    assert!(fake.calls().is_empty());
    assert!(s.token_file.exists());

    std::fs::write(&s.token_file, "garbage\n").expect("write");
    let err = enrol(&s, &options(&s), &fake).await.expect_err("bad token");
    assert!(
        err.to_string().contains(&format!(
            "invalid join token in join-token-file {}",
            s.token_file.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn the_environment_token_wins_and_leaves_the_file_alone() {
    let s = setup(0o600);
    let other = ClusterCa::generate("test").expect("ca");
    let env_token = JoinToken::new(&other.fingerprint(), [9; 16]).to_string();
    let fake = FakeJoin::new(&s.ca, vec![]);
    let mut opts = options(&s);
    opts.token.env = Some(env_token.clone());
    let done = enrol(&s, &opts, &fake).await.expect("ok").expect("done");
    assert!(matches!(
        done,
        Enrolled::Now {
            token_file_deleted: false,
            ..
        }
    ));
    assert_eq!(fake.calls()[0].token.to_string(), env_token);
    assert!(s.token_file.exists(), "not the token that was used");
    assert!(!format!("{opts:?}").contains(&env_token));
}

#[tokio::test]
async fn transient_failures_are_retried_refusals_are_not() {
    let s = setup(0o600);
    let fake = FakeJoin::new(
        &s.ca,
        vec![
            Some(JoinError::Stream(StreamError::Closed)),
            Some(JoinError::Rejected {
                code: RejectCode::Internal,
                reason: "store busy".into(),
            }),
            // An election between coordinators.
            Some(JoinError::NoLeader {
                addr: "coord.example:7443".into(),
            }),
            Some(JoinError::TooManyRedirects {
                addr: "b.example:7443".into(),
                leader: "a.example:7443".into(),
            }),
        ],
    );
    let done = enrol(&s, &options(&s), &fake).await.expect("ok");
    assert!(matches!(done, Some(Enrolled::Now { .. })));
    assert_eq!(fake.calls().len(), 5);
    assert!(!s.token_file.exists());

    let s = setup(0o600);
    let fake = FakeJoin::new(
        &s.ca,
        vec![Some(JoinError::Rejected {
            code: RejectCode::InvalidToken,
            reason: "the join token expired".into(),
        })],
    );
    let err = enrol(&s, &options(&s), &fake).await.expect_err("refused");
    assert!(err.to_string().contains("the join token expired"), "{err}");
    assert!(err.is_usage());
    assert_eq!(fake.calls().len(), 1);
    assert!(s.token_file.exists(), "kept: the enrolment failed");
}

#[tokio::test]
async fn a_shutdown_stops_the_retries() {
    let s = setup(0o600);
    let fake = FakeJoin::new(
        &s.ca,
        (0..100)
            .map(|_| Some(JoinError::Stream(StreamError::Closed)))
            .collect(),
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
    });
    let done = enrol_if_needed(&s.dir, &options(&s), &shutdown, |_| {}, fake.join())
        .await
        .expect("no error");
    assert_eq!(done, None);
    assert!(s.token_file.exists());
}

#[tokio::test]
async fn an_enrolled_host_ignores_its_token_and_keeps_the_file() {
    let s = setup(0o600);
    store_identity(&s.dir, &s.ca, "node-1");
    let fake = FakeJoin::new(&s.ca, vec![]);
    let done = enrol(&s, &options(&s), &fake).await.expect("ok");
    assert_eq!(done, Some(Enrolled::Already));
    assert!(fake.calls().is_empty());
    assert!(s.token_file.exists(), "not consumed, so not deleted");

    // Even a token file that is too open or gone does not matter any more.
    std::fs::set_permissions(&s.token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        enrol(&s, &options(&s), &fake).await.expect("ok"),
        Some(Enrolled::Already)
    );
    std::fs::remove_file(&s.token_file).expect("rm");
    assert_eq!(
        enrol(&s, &options(&s), &fake).await.expect("ok"),
        Some(Enrolled::Already)
    );
}
