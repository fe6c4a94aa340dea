use std::collections::BTreeMap;

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::agent::{AgentAction, AgentInfo, AgentState};
use crate::build::{Build, BuildPhase, BuildSpec, BuildState, Source};
use crate::digest::Digest;
use crate::ids::{AgentId, BuildId, JobId};
use crate::job::{FailureKind, ImageResult, Job, JobFailure};
use crate::time::Timestamp;
use crate::wire::*;

fn agent_id() -> AgentId {
    AgentId::from_bytes([1; 16])
}
fn job_id() -> JobId {
    JobId::from_bytes([2; 16])
}
fn build_id() -> BuildId {
    BuildId::from_bytes([3; 16])
}
fn digest() -> Digest {
    Digest::sha256_of(b"golden")
}
fn result() -> ImageResult {
    ImageResult {
        digest: digest(),
        size: 1234,
        media_type: crate::index::OCI_MANIFEST.into(),
    }
}
fn args() -> BTreeMap<String, String> {
    BTreeMap::from([("VERSION".to_string(), "1.2".to_string())])
}
fn spec() -> BuildSpec {
    BuildSpec {
        source: Source::Git {
            repo: "https://example.com/app.git".into(),
            reference: "main".into(),
        },
        dockerfile: "Dockerfile".into(),
        build_args: args(),
        target: Some("release".into()),
        labels: BTreeMap::new(),
        platforms: vec![
            "linux/amd64".parse().expect("valid"),
            "linux/arm64".parse().expect("valid"),
        ],
        tag: "registry.example.com:5000/team/app:v1"
            .parse()
            .expect("valid"),
        no_cache: false,
        fail_fast: true,
        timeout_secs: 7200,
    }
}
fn build_view() -> BuildView {
    let job = Job::new(
        job_id(),
        build_id(),
        "linux/amd64".parse().expect("valid"),
        Timestamp(1000),
    );
    BuildView {
        build: Build {
            id: build_id(),
            spec: spec(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            jobs: vec![job_id()],
            phase: BuildPhase::Building,
            created_at: Timestamp(1000),
            updated_at: Timestamp(1000),
        },
        jobs: vec![job],
        state: BuildState::Queued,
        notes: vec!["waiting for an agent that can build linux/amd64".into()],
    }
}
fn agent_info() -> AgentInfo {
    AgentInfo {
        id: agent_id(),
        name: "builder-1".into(),
        platforms: vec!["linux/amd64".parse().expect("valid")],
        capacity: 2,
        labels: BTreeMap::from([("rack".to_string(), "a".to_string())]),
        version: "0.1.0".into(),
        builder: "buildah".into(),
        state: AgentState::Ready,
        connected: true,
        last_seen: Some(Timestamp(5000)),
        enrolled_at: Timestamp(4000),
        running_jobs: 1,
    }
}

/// One value of every variant of every wire type, named. Adding a variant means
/// adding it here (the exhaustive matches below will not compile otherwise).
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        encode(v).expect("encodes")
    }
    let assignment = Assignment {
        job: job_id(),
        attempt: 1,
        build: build_id(),
        platform: "linux/arm64".parse().expect("valid"),
        source: PinnedSource::Git {
            repo: "https://example.com/app.git".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        dockerfile: "Dockerfile".into(),
        build_args: args(),
        target: None,
        labels: BTreeMap::new(),
        destination: "registry.example.com:5000/team/app:v1"
            .parse()
            .expect("valid"),
        no_cache: false,
    };
    let agent_msgs = [
        AgentToCoordinator::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            platforms: vec!["linux/amd64".parse().expect("valid")],
            capacity: 2,
            labels: BTreeMap::new(),
            builder: "buildah".into(),
            held: vec![HeldJob {
                job: job_id(),
                attempt: 1,
                outcome: Some(JobOutcome::Succeeded(result())),
            }],
        },
        AgentToCoordinator::Join {
            protocol_version: 1,
            token: "tok".into(),
            name: "n".into(),
            csr_der: vec![1, 2],
        },
        AgentToCoordinator::RenewCertificate {
            csr_der: vec![3, 4],
        },
        AgentToCoordinator::Accepted {
            job: job_id(),
            attempt: 1,
        },
        AgentToCoordinator::Started {
            job: job_id(),
            attempt: 1,
        },
        AgentToCoordinator::Finished {
            job: job_id(),
            attempt: 2,
            outcome: JobOutcome::Failed(JobFailure {
                kind: FailureKind::Build,
                message: "exit status 1".into(),
                exit_code: Some(1),
            }),
        },
        AgentToCoordinator::GoingAway {
            reason: "shutdown".into(),
        },
        AgentToCoordinator::Draining { deadline_secs: 600 },
        AgentToCoordinator::FetchContext { digest: digest() },
    ];
    let coord_msgs = [
        CoordinatorToAgent::Welcome {
            protocol_version: 1,
            coordinator_version: "0.1.0".into(),
            agent_id: agent_id(),
        },
        CoordinatorToAgent::Rejected {
            code: RejectCode::Revoked,
            reason: "revoked".into(),
        },
        CoordinatorToAgent::Joined {
            agent_id: agent_id(),
            cluster: "prod".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
        },
        CoordinatorToAgent::CertificateRenewed {
            cert_pem: "CERT2".into(),
        },
        CoordinatorToAgent::Assign(Box::new(assignment)),
        CoordinatorToAgent::Cancel {
            job: job_id(),
            attempt: 1,
            reason: "user".into(),
        },
        CoordinatorToAgent::Ack {
            job: job_id(),
            attempt: 1,
        },
        CoordinatorToAgent::ContextFollows { size: 4096 },
        CoordinatorToAgent::Redirect {
            leader: Some("10.0.0.2:7443".into()),
            coordinators: vec!["10.0.0.1:7443".into(), "10.0.0.2:7443".into()],
        },
        CoordinatorToAgent::Coordinators(vec!["10.0.0.1:7443".into(), "10.0.0.2:7443".into()]),
    ];
    let admin_reqs = [
        AdminRequest::Hello {
            protocol_version: 1,
            client_version: "0.1.0".into(),
        },
        AdminRequest::ListAgents,
        AdminRequest::UpdateAgent {
            agent: agent_id(),
            action: AgentAction::Cordon,
        },
        AdminRequest::CreateToken {
            ttl_secs: 3600,
            uses: 1,
        },
        AdminRequest::SubmitBuild { spec: spec() },
        AdminRequest::ListBuilds { limit: 50 },
        AdminRequest::GetBuild { build: build_id() },
        AdminRequest::CancelBuild { build: build_id() },
        AdminRequest::BuildLogs {
            build: build_id(),
            platform: None,
            follow: true,
        },
        AdminRequest::WaitBuild { build: build_id() },
        AdminRequest::HasContext { digest: digest() },
        AdminRequest::UploadContext {
            digest: digest(),
            size: 10,
        },
        AdminRequest::ListCache,
        AdminRequest::PruneCache {
            older_than_secs: Some(86400),
        },
        AdminRequest::ClusterStatus,
    ];
    let admin_resps = [
        AdminResponse::Welcome {
            protocol_version: 1,
            server_version: "0.1.0".into(),
            cluster: "prod".into(),
        },
        AdminResponse::Error {
            code: RejectCode::NotFound,
            message: "no such build".into(),
        },
        AdminResponse::Agents(vec![agent_info()]),
        AdminResponse::Agent(agent_info()),
        AdminResponse::Token {
            token: "tok".into(),
            expires_at: Timestamp(9000),
            uses: 1,
        },
        AdminResponse::Build(Box::new(build_view())),
        AdminResponse::Builds(vec![build_view()]),
        AdminResponse::Log {
            job: job_id(),
            platform: "linux/amd64".parse().expect("valid"),
            data: b"step 1\n".to_vec(),
        },
        AdminResponse::LogEnd,
        AdminResponse::ContextPresent {
            present: true,
            max_size: 1 << 31,
        },
        AdminResponse::ContextStored {
            digest: digest(),
            size: 10,
        },
        AdminResponse::Cache(vec![crate::cache::CacheEntry {
            key: digest(),
            repository: "registry.example.com:5000/team/app".into(),
            platform: "linux/amd64".parse().expect("valid"),
            result: result(),
            build: build_id(),
            agent: agent_id(),
            builder: "buildah".into(),
            created_at: Timestamp(1),
            last_used: Timestamp(2),
        }]),
        AdminResponse::Pruned {
            cache_entries: 3,
            contexts: 1,
        },
        AdminResponse::Redirect {
            leader: None,
            coordinators: vec!["10.0.0.1:7443".into()],
        },
        AdminResponse::Cluster(crate::wire::ClusterStatus {
            store: "postgres".into(),
            epoch: 7,
            leader: Some("10.0.0.1:7443".into()),
            lease_expires: Some(Timestamp(10_000)),
            now: Timestamp(5_000),
            coordinators: vec![crate::wire::CoordinatorInfo {
                advertise: "10.0.0.1:7443".into(),
                leader: true,
                last_seen: Timestamp(4_000),
                version: "0.1.0".into(),
            }],
        }),
    ];
    // Exhaustiveness guards: a new variant must be added to the lists above.
    for m in &agent_msgs {
        match m {
            AgentToCoordinator::Hello { .. }
            | AgentToCoordinator::Join { .. }
            | AgentToCoordinator::RenewCertificate { .. }
            | AgentToCoordinator::Accepted { .. }
            | AgentToCoordinator::Started { .. }
            | AgentToCoordinator::Finished { .. }
            | AgentToCoordinator::GoingAway { .. }
            | AgentToCoordinator::Draining { .. }
            | AgentToCoordinator::FetchContext { .. } => {}
        }
    }
    for m in &coord_msgs {
        match m {
            CoordinatorToAgent::Welcome { .. }
            | CoordinatorToAgent::Rejected { .. }
            | CoordinatorToAgent::Joined { .. }
            | CoordinatorToAgent::CertificateRenewed { .. }
            | CoordinatorToAgent::Assign(_)
            | CoordinatorToAgent::Cancel { .. }
            | CoordinatorToAgent::Ack { .. }
            | CoordinatorToAgent::ContextFollows { .. }
            | CoordinatorToAgent::Redirect { .. }
            | CoordinatorToAgent::Coordinators(_) => {}
        }
    }
    for m in &admin_reqs {
        match m {
            AdminRequest::Hello { .. }
            | AdminRequest::ListAgents
            | AdminRequest::UpdateAgent { .. }
            | AdminRequest::CreateToken { .. }
            | AdminRequest::SubmitBuild { .. }
            | AdminRequest::ListBuilds { .. }
            | AdminRequest::GetBuild { .. }
            | AdminRequest::CancelBuild { .. }
            | AdminRequest::BuildLogs { .. }
            | AdminRequest::WaitBuild { .. }
            | AdminRequest::HasContext { .. }
            | AdminRequest::UploadContext { .. }
            | AdminRequest::ListCache
            | AdminRequest::PruneCache { .. }
            | AdminRequest::ClusterStatus => {}
        }
    }
    for m in &admin_resps {
        match m {
            AdminResponse::Welcome { .. }
            | AdminResponse::Error { .. }
            | AdminResponse::Agents(_)
            | AdminResponse::Agent(_)
            | AdminResponse::Token { .. }
            | AdminResponse::Build(_)
            | AdminResponse::Builds(_)
            | AdminResponse::Log { .. }
            | AdminResponse::LogEnd
            | AdminResponse::ContextPresent { .. }
            | AdminResponse::ContextStored { .. }
            | AdminResponse::Cache(_)
            | AdminResponse::Pruned { .. }
            | AdminResponse::Redirect { .. }
            | AdminResponse::Cluster(_) => {}
        }
    }
    let mut out = Vec::new();
    let names = [
        "hello",
        "join",
        "renew",
        "accepted",
        "started",
        "finished",
        "going_away",
        "draining",
        "fetch_context",
    ];
    for (n, m) in names.iter().zip(&agent_msgs) {
        out.push((*n, enc(m)));
    }
    let names = [
        "welcome",
        "rejected",
        "joined",
        "renewed",
        "assign",
        "cancel",
        "ack",
        "context_follows",
        "redirect",
        "coordinators",
    ];
    for (n, m) in names.iter().zip(&coord_msgs) {
        out.push((*n, enc(m)));
    }
    let names = [
        "admin_hello",
        "list_agents",
        "update_agent",
        "create_token",
        "submit_build",
        "list_builds",
        "get_build",
        "cancel_build",
        "build_logs",
        "wait_build",
        "has_context",
        "upload_context",
        "list_cache",
        "prune_cache",
        "cluster_status",
    ];
    for (n, m) in names.iter().zip(&admin_reqs) {
        out.push((*n, enc(m)));
    }
    let names = [
        "admin_welcome",
        "error",
        "agents",
        "agent",
        "token",
        "build",
        "builds",
        "log",
        "log_end",
        "context_present",
        "context_stored",
        "cache",
        "pruned",
        "admin_redirect",
        "cluster",
    ];
    for (n, m) in names.iter().zip(&admin_resps) {
        out.push((*n, enc(m)));
    }
    out.push((
        "log_chunk",
        enc(&LogChunk {
            job: job_id(),
            attempt: 1,
            offset: 4096,
            data: b"hello\n".to_vec(),
        }),
    ));
    out
}

const GOLDEN: &str = include_str!("golden.txt");

/// The encoding of every message is frozen. After a deliberate, versioned change,
/// regenerate with `HELIX_BLESS=1 cargo test -p helix-protocol golden`.
#[test]
fn golden_bytes_of_every_message() {
    let actual: String = samples()
        .iter()
        .map(|(n, b)| format!("{n} {}\n", hex::encode(b)))
        .collect();
    if std::env::var_os("HELIX_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/codec/golden.txt");
        std::fs::write(path, &actual).expect("write golden file");
        return;
    }
    for (want, got) in GOLDEN.lines().zip(actual.lines()) {
        assert_eq!(
            want, got,
            "encoding changed; see the doc comment of this test"
        );
    }
    assert_eq!(
        GOLDEN.lines().count(),
        actual.lines().count(),
        "a message was added or removed"
    );
}

#[test]
fn every_sample_decodes_back_to_itself() {
    // Round-trip through bytes for each direction's type.
    fn rt<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = encode(&v).expect("encodes");
        let mut buf = BytesMut::from(&bytes[..]);
        let back: T = decode(&mut buf).expect("decodes").expect("complete");
        assert_eq!(back, v);
        assert!(buf.is_empty());
    }
    rt(AdminResponse::Build(Box::new(build_view())));
    rt(AdminResponse::Agents(vec![agent_info()]));
    rt(AdminRequest::SubmitBuild { spec: spec() });
    rt(AgentToCoordinator::Finished {
        job: job_id(),
        attempt: 3,
        outcome: JobOutcome::Succeeded(result()),
    });
}

#[test]
fn truncated_frames_need_more_bytes_at_every_offset() {
    for (name, frame) in samples() {
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            let got: Result<Option<AdminResponse>, _> = decode(&mut buf);
            assert!(matches!(got, Ok(None)), "{name} cut at {cut}: {got:?}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }
}

#[test]
fn an_oversize_length_prefix_is_refused_before_allocation() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 1, 2][..]);
    let cap_before = buf.capacity();
    let got: Result<Option<AdminRequest>, _> = decode(&mut buf);
    assert!(
        matches!(
            got,
            Err(FrameError::TooLarge {
                len: 4_294_967_295,
                ..
            })
        ),
        "{got:?}"
    );
    assert_eq!(
        buf.capacity(),
        cap_before,
        "no allocation for the claimed size"
    );
    let just_over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(matches!(
        check_len(just_over),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(
        check_len((MAX_FRAME_LEN as u32).to_be_bytes()).expect("at the limit"),
        MAX_FRAME_LEN
    );
}

#[test]
fn garbage_payloads_are_typed_errors() {
    // An unknown variant tag.
    let mut buf = BytesMut::from(&[0, 0, 0, 1, 0xfe][..]);
    let got: Result<Option<AdminRequest>, _> = decode(&mut buf);
    assert!(matches!(got, Err(FrameError::Decode(_))), "{got:?}");
    // A valid message followed by trailing bytes inside the frame.
    let mut payload =
        bincode::serde::encode_to_vec(&AdminRequest::ListAgents, config()).expect("encodes");
    payload.extend_from_slice(&[7, 7]);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let got: Result<Option<AdminRequest>, _> = decode(&mut BytesMut::from(&frame[..]));
    assert!(matches!(got, Err(FrameError::TrailingBytes(2))), "{got:?}");
    // A string whose claimed length exceeds the frame.
    let got: Result<AgentToCoordinator, _> = decode_payload(&[6, 0xfc, 0xff, 0xff, 0xff, 0x0f]);
    assert!(got.is_err());
}

#[test]
fn an_invalid_platform_inside_a_frame_is_a_decode_error() {
    // Encode a Log with a valid platform, then corrupt the platform string's bytes.
    let msg = AdminResponse::Log {
        job: job_id(),
        platform: "linux/amd64".parse().expect("valid"),
        data: vec![],
    };
    let mut frame = encode(&msg).expect("encodes");
    let pos = frame
        .windows(5)
        .position(|w| w == b"amd64")
        .expect("platform in frame");
    frame[pos..pos + 5].copy_from_slice(b"amd65");
    let got: Result<Option<AdminResponse>, _> = decode(&mut BytesMut::from(&frame[..]));
    match got {
        Err(FrameError::Decode(msg)) => assert!(msg.contains("amd65"), "{msg}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn frames_decode_one_at_a_time_from_a_stream() {
    let mut buf = BytesMut::new();
    encode_into(&AdminRequest::ListAgents, &mut buf).expect("encodes");
    encode_into(&AdminRequest::GetBuild { build: build_id() }, &mut buf).expect("encodes");
    let first: AdminRequest = decode(&mut buf).expect("ok").expect("complete");
    let second: AdminRequest = decode(&mut buf).expect("ok").expect("complete");
    assert_eq!(first, AdminRequest::ListAgents);
    assert_eq!(second, AdminRequest::GetBuild { build: build_id() });
    assert!(decode::<AdminRequest>(&mut buf).expect("ok").is_none());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode::<AgentToCoordinator>(&mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode::<AdminRequest>(&mut buf);
        let _ = decode_payload::<CoordinatorToAgent>(&bytes);
        let _ = decode_payload::<AdminResponse>(&bytes);
    }

    #[test]
    fn log_chunks_round_trip(job in any::<[u8; 16]>(), attempt in any::<u32>(), offset in any::<u64>(),
                             data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let chunk = LogChunk { job: JobId::from_bytes(job), attempt, offset, data };
        let mut buf = BytesMut::from(&encode(&chunk).expect("encodes")[..]);
        let back: LogChunk = decode(&mut buf).expect("ok").expect("complete");
        prop_assert_eq!(back, chunk);
    }

    #[test]
    fn control_messages_round_trip(job in any::<[u8; 16]>(), attempt in any::<u32>(), reason in ".{0,200}",
                                   token in "[a-zA-Z0-9._-]{0,100}", csr in proptest::collection::vec(any::<u8>(), 0..512)) {
        let job = JobId::from_bytes(job);
        for msg in [
            AgentToCoordinator::Accepted { job, attempt },
            AgentToCoordinator::Started { job, attempt },
            AgentToCoordinator::GoingAway { reason: reason.clone() },
            AgentToCoordinator::Join { protocol_version: attempt, token: token.clone(), name: reason.clone(), csr_der: csr.clone() },
            AgentToCoordinator::Finished { job, attempt, outcome: JobOutcome::Failed(JobFailure {
                kind: FailureKind::Infrastructure, message: reason.clone(), exit_code: None }) },
        ] {
            let bytes = encode(&msg).expect("encodes");
            let back: AgentToCoordinator = decode_payload(&bytes[LEN_PREFIX..]).expect("decodes");
            prop_assert_eq!(back, msg);
        }
        for msg in [
            CoordinatorToAgent::Cancel { job, attempt, reason: reason.clone() },
            CoordinatorToAgent::Rejected { code: RejectCode::BadRequest, reason: reason.clone() },
        ] {
            let bytes = encode(&msg).expect("encodes");
            let back: CoordinatorToAgent = decode_payload(&bytes[LEN_PREFIX..]).expect("decodes");
            prop_assert_eq!(back, msg);
        }
    }
}
