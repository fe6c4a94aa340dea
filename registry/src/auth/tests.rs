use super::*;

fn env(home: &Path) -> AuthEnv {
    AuthEnv {
        registry_auth_file: None,
        xdg_runtime_dir: Some(home.join("run")),
        uid: Some(1000),
        xdg_config_home: None,
        docker_config: None,
        home: Some(home.to_owned()),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write auth file");
}

/// An auth file with `user:password` for `host`, in the `auth` (base64) form.
fn auth_json(host: &str, user: &str, password: &str) -> String {
    // Hand-rolled base64 keeps the test free of another dependency.
    let b64 = base64(format!("{user}:{password}").as_bytes());
    format!(r#"{{"auths": {{"{host}": {{"auth": "{b64}"}}}}}}"#)
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[test]
fn search_order_follows_podman() {
    let home = Path::new("/home/u");
    assert_eq!(
        env(home).auth_files(),
        [
            PathBuf::from("/home/u/run/containers/auth.json"),
            PathBuf::from("/home/u/.config/containers/auth.json"),
            PathBuf::from("/home/u/.docker/config.json"),
        ]
    );
    let system_service = AuthEnv {
        xdg_runtime_dir: None,
        uid: Some(0),
        home: Some("/root".into()),
        ..AuthEnv::default()
    };
    assert_eq!(
        system_service.auth_files(),
        [
            PathBuf::from("/run/containers/0/auth.json"),
            PathBuf::from("/root/.config/containers/auth.json"),
            PathBuf::from("/root/.docker/config.json"),
        ]
    );
    let overridden = AuthEnv {
        xdg_config_home: Some("/cfg".into()),
        docker_config: Some("/dock".into()),
        ..env(home)
    };
    assert_eq!(
        overridden.auth_files(),
        [
            PathBuf::from("/home/u/run/containers/auth.json"),
            PathBuf::from("/cfg/containers/auth.json"),
            PathBuf::from("/dock/config.json"),
        ]
    );
    let explicit = AuthEnv {
        registry_auth_file: Some("/etc/helix/auth.json".into()),
        ..env(home)
    };
    assert_eq!(
        explicit.auth_files(),
        [PathBuf::from("/etc/helix/auth.json")]
    );
    assert!(AuthEnv::default().auth_files().is_empty());
}

#[test]
fn nothing_configured_is_anonymous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolved = AuthSource::Files(env(dir.path()))
        .resolve("quay.io")
        .expect("resolves");
    assert_eq!(resolved, Resolved::anonymous());
    assert_eq!(
        AuthSource::Anonymous.resolve("quay.io").expect("resolves"),
        Resolved::anonymous()
    );
}

#[test]
fn the_first_file_with_a_credential_for_the_host_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = env(dir.path());
    let runtime = dir.path().join("run/containers/auth.json");
    let config = dir.path().join(".config/containers/auth.json");
    let docker = dir.path().join(".docker/config.json");
    write(&runtime, &auth_json("quay.io", "rt", "rt-pw"));
    write(&config, &auth_json("ghcr.io", "cfg", "cfg-pw"));
    write(
        &docker,
        &auth_json("https://index.docker.io/v1/", "hub", "hub-pw"),
    );
    let source = AuthSource::Files(e);
    let quay = source.resolve("quay.io").expect("resolves");
    assert_eq!(quay.credential, basic("rt", "rt-pw"));
    assert_eq!(quay.file.as_deref(), Some(runtime.as_path()));
    let ghcr = source.resolve("ghcr.io").expect("resolves");
    assert_eq!(ghcr.credential, basic("cfg", "cfg-pw"));
    assert_eq!(ghcr.file.as_deref(), Some(config.as_path()));
    // Docker Hub's legacy key matches the normalized `docker.io` host.
    let hub = source.resolve("docker.io").expect("resolves");
    assert_eq!(hub.credential, basic("hub", "hub-pw"));
    let other = source.resolve("127.0.0.1:5000").expect("resolves");
    assert_eq!(other.credential, Credential::Anonymous);
}

#[test]
fn registry_auth_file_replaces_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let explicit = dir.path().join("explicit.json");
    write(
        &explicit,
        &auth_json("127.0.0.1:5000", "me", "secret:with:colons"),
    );
    write(
        &dir.path().join("run/containers/auth.json"),
        &auth_json("quay.io", "rt", "rt-pw"),
    );
    let source = AuthSource::Files(AuthEnv {
        registry_auth_file: Some(explicit.clone()),
        ..env(dir.path())
    });
    let local = source.resolve("127.0.0.1:5000").expect("resolves");
    assert_eq!(local.credential, basic("me", "secret:with:colons"));
    // The default files are not consulted when a file is named.
    let quay = source.resolve("quay.io").expect("resolves");
    assert_eq!(quay.credential, Credential::Anonymous);
    // A named file that does not exist is anonymous, as for podman.
    let missing = AuthSource::Files(AuthEnv {
        registry_auth_file: Some(dir.path().join("nope.json")),
        ..AuthEnv::default()
    });
    assert_eq!(
        missing.resolve("quay.io").expect("resolves").credential,
        Credential::Anonymous
    );
}

#[test]
fn username_and_password_fields_work_without_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.json");
    write(
        &path,
        r#"{"auths": {"reg.example": {"username": "u", "password": "p"}}}"#,
    );
    let source = AuthSource::Files(AuthEnv {
        registry_auth_file: Some(path),
        ..AuthEnv::default()
    });
    assert_eq!(
        source.resolve("reg.example").expect("resolves").credential,
        basic("u", "p")
    );
}

#[track_caller]
fn check_error(contents: &str, expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.json");
    write(&path, contents);
    let source = AuthSource::Files(AuthEnv {
        registry_auth_file: Some(path.clone()),
        ..AuthEnv::default()
    });
    match source.resolve("reg.example") {
        Ok(r) => panic!("{contents:?} should be refused, resolved to {r:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(expected),
                "{msg:?} should contain {expected:?}"
            );
            assert!(
                msg.contains(&path.display().to_string()),
                "{msg:?} should name the file"
            );
        }
    }
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    check_error("{not json", "is not valid auth JSON");
    check_error(
        r#"{"auths": {"reg.example": {"auth": "%%%"}}}"#,
        "cannot be decoded",
    );
    check_error(
        &format!(
            r#"{{"auths": {{"reg.example": {{"auth": "{}", "username": "x", "password": "y"}}}}}}"#,
            base64(b"u:p")
        ),
        "does not match",
    );
    check_error(
        r#"{"auths": {"reg.example": {"identitytoken": "tok"}}}"#,
        "identity token",
    );
    check_error(
        r#"{"auths": {}, "credHelpers": {"reg.example": "helix-test-no-such-helper"}}"#,
        "credential helper",
    );
}

#[cfg(unix)]
#[test]
fn an_unreadable_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: open succeeds on Linux but reading
    // fails, or open fails with something other than NotFound; either way an error.
    let path = dir.path().join("auth.json");
    std::fs::create_dir(&path).expect("mkdir");
    let source = AuthSource::Files(AuthEnv {
        registry_auth_file: Some(path),
        ..AuthEnv::default()
    });
    assert!(source.resolve("reg.example").is_err());
}

#[test]
fn debug_never_shows_the_password() {
    let shown = format!("{:?}", basic("user", "hunter2"));
    assert!(
        shown.contains("user") && !shown.contains("hunter2"),
        "{shown}"
    );
}
