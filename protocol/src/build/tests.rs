use super::*;

fn spec() -> BuildSpec {
    BuildSpec {
        source: Source::Git {
            repo: "https://example.com/app.git".into(),
            reference: "main".into(),
        },
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        platforms: vec!["linux/amd64".parse().expect("valid")],
        tag: "localhost:5000/app:v1".parse().expect("valid"),
        no_cache: false,
        fail_fast: true,
        timeout_secs: 7200,
    }
}

#[track_caller]
fn refused(spec: &BuildSpec, allow_file: bool, needle: &str) {
    match spec.validate(allow_file) {
        Ok(()) => panic!("expected a refusal containing {needle:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{e} does not contain {needle:?}"
        ),
    }
}

#[test]
fn a_plain_spec_is_valid() {
    assert_eq!(spec().validate(false), Ok(()));
}

#[test]
fn repo_url_schemes() {
    for ok in [
        "https://h/r.git",
        "http://h:8080/r",
        "ssh://git@h/r.git",
        "git://h/r",
        "HTTPS://h/r",
    ] {
        assert_eq!(validate_repo_url(ok, false), Ok(()), "{ok}");
    }
    assert_eq!(validate_repo_url("file:///srv/repo", true), Ok(()));
    for (bad, allow, needle) in [
        ("file:///srv/repo", false, "--allow-file-repos"),
        ("file://relative", true, "absolute path"),
        ("ftp://h/r", false, "unsupported scheme \"ftp\""),
        (
            "git@github.com:a/b.git",
            false,
            "expected a URL with a scheme",
        ),
        ("", false, "empty"),
        ("https:///nohost", false, "no host"),
        ("-uhttps://x", false, "cannot start with '-'"),
        ("https://h/r\n", false, "whitespace"),
    ] {
        let err = validate_repo_url(bad, allow).expect_err(bad).to_string();
        assert!(err.contains(needle), "{bad}: {err}");
        assert!(err.starts_with("invalid --repo"), "names the field: {err}");
    }
}

#[test]
fn refs_dockerfiles_and_targets() {
    let mut s = spec();
    for bad in ["", "-n", "a..b", "a b", "a~1", "a:b"] {
        s.source = Source::Git {
            repo: "https://h/r".into(),
            reference: bad.into(),
        };
        refused(&s, false, "invalid --ref");
    }
    s = spec();
    for bad in ["", "/etc/Dockerfile", "../Dockerfile", "a/../../b"] {
        s.dockerfile = bad.into();
        refused(&s, false, "invalid -f/--file");
    }
    s.dockerfile = "docker/Dockerfile.release".into();
    assert_eq!(s.validate(false), Ok(()));
    s.target = Some("bad stage".into());
    refused(&s, false, "invalid --target");
    s.target = Some("build-stage_1".into());
    assert_eq!(s.validate(false), Ok(()));
}

#[test]
fn build_args_and_labels_are_bounded() {
    let mut s = spec();
    s.build_args.insert("A=B".into(), "x".into());
    refused(&s, false, "invalid --build-arg");
    s = spec();
    s.labels.insert("k".repeat(MAX_KEY_LEN + 1), "x".into());
    refused(&s, false, "invalid --label");
    s = spec();
    s.build_args
        .insert("BIG".into(), "v".repeat(MAX_VALUE_LEN + 1));
    refused(&s, false, "longer than");
    s = spec();
    for i in 0..=MAX_KEY_VALUE_PAIRS {
        s.labels.insert(format!("k{i}"), String::new());
    }
    refused(&s, false, "at most");
}

#[test]
fn platforms_are_required_and_unique() {
    let mut s = spec();
    s.platforms.clear();
    refused(&s, false, "at least one platform");
    s.platforms = vec![
        "linux/amd64".parse().expect("valid"),
        "linux/amd64".parse().expect("valid"),
    ];
    refused(&s, false, "listed twice");
}

#[test]
fn key_values_parse() {
    assert_eq!(
        parse_key_value("build-arg", "A=b=c"),
        Ok(("A".into(), "b=c".into()))
    );
    assert_eq!(
        parse_key_value("build-arg", "A="),
        Ok(("A".into(), String::new()))
    );
    assert!(parse_key_value("label", "=x").is_err());
    assert!(parse_key_value("label", "novalue").is_err());
}

#[test]
fn build_state_is_derived_from_phase_and_jobs() {
    use crate::ids::{AgentId, BuildId, JobId};
    use crate::job::{Job, JobEvent};
    let mut build = Build {
        id: BuildId::new_v4(),
        spec: spec(),
        commit: None,
        jobs: vec![],
        phase: BuildPhase::Building,
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
    };
    let mut job = Job::new(
        JobId::new_v4(),
        build.id,
        "linux/amd64".parse().expect("valid"),
        Timestamp(0),
    );
    assert_eq!(build.state(std::slice::from_ref(&job)), BuildState::Queued);
    job.transition(JobEvent::Assign {
        agent: AgentId::new_v4(),
        at: Timestamp(1),
    })
    .expect("legal");
    assert_eq!(build.state(std::slice::from_ref(&job)), BuildState::Running);
    build.phase = BuildPhase::Assembling;
    assert_eq!(build.state(&[]), BuildState::Assembling);
    build.phase = BuildPhase::Failed { reason: "x".into() };
    assert_eq!(build.state(&[]), BuildState::Failed);
    assert!(BuildState::Failed.is_terminal());
    assert!(!BuildState::Assembling.is_terminal());
}
