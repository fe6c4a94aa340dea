use super::*;

const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn digest() -> String {
    format!("sha256:{HEX}")
}

/// Parses `input` and checks its fully-qualified form.
#[track_caller]
fn check(input: &str, expected: &str) {
    match input.parse::<ImageRef>() {
        Ok(r) => {
            assert_eq!(r.to_string(), expected, "normalizing {input:?}");
            let again: ImageRef = r.to_string().parse().expect("the normalized form parses");
            assert_eq!(again, r, "{expected:?} must be a fixed point");
        }
        Err(e) => panic!("{input:?} should parse as {expected:?}, got: {e}"),
    }
}

/// Checks that `input` is refused with a message containing `expected`.
#[track_caller]
fn check_err(input: &str, expected: &str) {
    match input.parse::<ImageRef>() {
        Ok(r) => panic!("{input:?} should be refused, parsed as {r}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(expected),
                "error for {input:?} is {msg:?}, expected it to contain {expected:?}"
            );
            assert!(
                msg.starts_with(&format!("invalid image reference {input:?}: ")),
                "error does not name the input: {msg:?}"
            );
        }
    }
}

#[track_caller]
fn r(s: &str) -> ImageRef {
    s.parse().expect("test reference is valid")
}

#[test]
fn docker_hub_defaulting() {
    check("alpine", "docker.io/library/alpine:latest");
    check("alpine:3.20", "docker.io/library/alpine:3.20");
    check("library/alpine", "docker.io/library/alpine:latest");
    check("docker.io/alpine", "docker.io/library/alpine:latest");
    check(
        "docker.io/library/alpine:edge",
        "docker.io/library/alpine:edge",
    );
    check("index.docker.io/alpine", "docker.io/library/alpine:latest");
    check("index.docker.io/user/app:1", "docker.io/user/app:1");
    check("user/app", "docker.io/user/app:latest");
    check("a/b/c/d", "docker.io/a/b/c/d:latest");
    check("docker.io/library", "docker.io/library/library:latest");
    // Docker treats a lone `localhost` (or `localhost:5000`) as a Hub repository.
    check("localhost", "docker.io/library/localhost:latest");
    check("localhost:5000", "docker.io/library/localhost:5000");
    check("example.com", "docker.io/library/example.com:latest");
    // Only the legacy name is folded; other Hub hosts are registries of their own.
    check(
        "registry-1.docker.io/library/alpine",
        "registry-1.docker.io/library/alpine:latest",
    );
}

#[test]
fn registries() {
    check("ghcr.io/org/app:v1.2.3", "ghcr.io/org/app:v1.2.3");
    check("localhost/app", "localhost/app:latest");
    check("localhost:5000/a/b", "localhost:5000/a/b:latest");
    check("registry:5000/app", "registry:5000/app:latest");
    check("example.com:443/app", "example.com:443/app:latest");
    check("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1");
    check("127.0.0.1/app", "127.0.0.1/app:latest");
    check("[::1]:5000/app", "[::1]:5000/app:latest");
    check("[::1]/app", "[::1]/app:latest");
    check(
        "[2001:db8::1]:5000/team/app:2",
        "[2001:db8::1]:5000/team/app:2",
    );
    check("[2001:DB8::A]/app", "[2001:DB8::A]/app:latest");
    check(
        "my-registry.example-corp.com/team/app",
        "my-registry.example-corp.com/team/app:latest",
    );
    check("a--b.example.com/app", "a--b.example.com/app:latest");
    check("1.example/app", "1.example/app:latest");
    // Docker keeps the host as written.
    check(
        "Registry.Example.COM/app",
        "Registry.Example.COM/app:latest",
    );
    check("localhost:5000/app", "localhost:5000/app:latest");
}

#[test]
fn tags_and_digests() {
    let d = digest();
    check(
        &format!("alpine@{d}"),
        &format!("docker.io/library/alpine@{d}"),
    );
    check(
        &format!("alpine:3@{d}"),
        &format!("docker.io/library/alpine:3@{d}"),
    );
    check(
        &format!("localhost:5000/a/b:1@{d}"),
        &format!("localhost:5000/a/b:1@{d}"),
    );
    check(&format!("[::1]:5000/a@{d}"), &format!("[::1]:5000/a@{d}"));
    check("app:_x", "docker.io/library/app:_x");
    check("app:V1.0-RC_1", "docker.io/library/app:V1.0-RC_1");
    check("app:1", "docker.io/library/app:1");
    let longest = format!("w{}", "x".repeat(127));
    check(
        &format!("app:{longest}"),
        &format!("docker.io/library/app:{longest}"),
    );
}

#[test]
fn path_components() {
    check(
        "x/a.b/c_d/e__f/g-h/i---j",
        "docker.io/x/a.b/c_d/e__f/g-h/i---j:latest",
    );
    // A '.' in the first component makes it a registry, even where a path would do.
    check("a.b/c_d", "a.b/c_d:latest");
    check("1", "docker.io/library/1:latest");
    check("0/9", "docker.io/0/9:latest");
    check("a.b.c", "docker.io/library/a.b.c:latest");
    // A 64-hex component is fine inside a path; only a bare one is an image id.
    check(
        &format!("user/{HEX}"),
        &format!("docker.io/user/{HEX}:latest"),
    );
}

#[test]
fn accessors() {
    let alpine = r("alpine");
    assert_eq!(alpine.registry(), "docker.io");
    assert_eq!(alpine.repository(), "library/alpine");
    assert_eq!(alpine.tag(), Some("latest"));
    assert_eq!(alpine.digest(), None);
    assert_eq!(alpine.repository_ref(), "docker.io/library/alpine");

    let pinned = r(&format!("localhost:5000/a/b:1@{}", digest()));
    assert_eq!(pinned.registry(), "localhost:5000");
    assert_eq!(pinned.repository(), "a/b");
    assert_eq!(pinned.tag(), Some("1"));
    assert_eq!(pinned.digest(), Some(&Digest::sha256_of(b"")));
    assert_eq!(pinned.repository_ref(), "localhost:5000/a/b");

    let by_digest = r(&format!("ghcr.io/org/app@{}", digest()));
    assert_eq!(by_digest.tag(), None);
}

#[test]
fn with_digest_drops_the_tag() {
    let tagged = r("localhost:5000/team/app:v2");
    let d = Digest::sha256_of(b"manifest");
    let pinned = tagged.with_digest(d.clone());
    assert_eq!(pinned.to_string(), format!("localhost:5000/team/app@{d}"));
    assert_eq!(pinned.tag(), None);
    assert_eq!(pinned.digest(), Some(&d));
    assert_eq!(pinned.repository_ref(), tagged.repository_ref());
    assert_eq!(pinned, r(&pinned.to_string()));

    let both = r(&format!("alpine:3@{}", digest()));
    assert_eq!(
        both.with_digest(d.clone()).to_string(),
        format!("docker.io/library/alpine@{d}")
    );
}

#[test]
fn equal_spellings_are_equal() {
    assert_eq!(r("alpine"), r("docker.io/library/alpine:latest"));
    assert_eq!(r("index.docker.io/alpine"), r("docker.io/alpine:latest"));
    assert_ne!(r("alpine"), r("alpine:3"));
}

#[test]
fn lowercase_errors() {
    check_err(
        "Alpine",
        r#"repository name must be lowercase (got "Alpine")"#,
    );
    check_err("Foo/bar", "repository name must be lowercase");
    check_err(
        "docker.io/Library/alpine",
        "repository name must be lowercase",
    );
    check_err(
        "localhost:5000/App:1",
        r#"repository name must be lowercase (got "App")"#,
    );
    check_err("ghcr.io/org/MyApp", "repository name must be lowercase");
}

#[test]
fn empty_parts() {
    check_err("", "empty reference");
    check_err(
        "a//b",
        r#"empty path component in "a//b" (a leading, trailing or doubled '/')"#,
    );
    check_err("a/b/", r#"empty path component in "a/b/""#);
    check_err("/a", r#"empty path component in "/a""#);
    check_err("a/b/:1", "empty path component");
    check_err(
        "example.com/",
        r#"empty repository path after registry "example.com""#,
    );
    check_err("localhost:5000/", "empty repository path after registry");
    check_err("example.com//app", r#"empty path component in "/app""#);
    check_err(":1", "missing repository name");
    check_err(&format!("@{}", digest()), "missing repository name");
    check_err("app:", "empty tag after ':'");
    check_err("app@", "empty digest after '@'");
}

#[test]
fn bad_path_characters_and_separators() {
    check_err("a b", r#"invalid character ' ' in path component "a b""#);
    check_err("a$b", "invalid character '$'");
    check_err("user/app!", "invalid character '!'");
    check_err("alpïne", "invalid character 'ï'");
    check_err("a:b:c", r#"invalid character ':' in path component "a:b""#);
    check_err("a/b:c/d", "invalid character ':'");
    check_err(
        "-a",
        r#"path component "-a" must start and end with a lower-case letter or digit"#,
    );
    check_err("a-", "must start and end with a lower-case letter or digit");
    check_err("a_", "must start and end");
    check_err("user/.app", "must start and end");
    check_err("a..b", r#"invalid separator ".." in path component "a..b""#);
    check_err("a___b", r#"invalid separator "___""#);
    check_err("a._b", r#"invalid separator "._""#);
    check_err("a-.b", r#"invalid separator "-.""#);
    check_err("a-_b", r#"invalid separator "-_""#);
}

#[test]
fn bad_registries() {
    check_err(
        "exa_mple.com/app",
        r#"invalid character '_' in registry host "exa_mple.com""#,
    );
    check_err(
        "example..com/app",
        r#"empty label in registry host "example..com""#,
    );
    check_err(".example.com/app", "empty label in registry host");
    check_err("example.com./app", "empty label in registry host");
    check_err(
        "-example.com/app",
        r#"registry host label "-example" must not start or end with '-'"#,
    );
    check_err("example-.com:5000/app", "must not start or end with '-'");
    check_err(
        "example.com:/app",
        r#"invalid port "" in registry "example.com:""#,
    );
    check_err("example.com:50a0/app", r#"invalid port "50a0""#);
    check_err("example.com:-1/app", r#"invalid port "-1""#);
    check_err(
        ":5000/app",
        r#"registry ":5000" has no host name before the port"#,
    );
    check_err(
        "::1/app",
        "looks like an IPv6 address: write it in brackets, e.g. [::1]:5000",
    );
    check_err("[::1/app", r#"registry "[::1" has an unclosed '['"#);
    check_err(
        "[]:5000/app",
        r#"invalid IPv6 address "" in registry "[]:5000""#,
    );
    check_err("[::g]/app", r#"invalid IPv6 address "::g""#);
    check_err("[fe80::1%eth0]/app", "no zone");
    check_err(
        "[::1]x/app",
        r#"unexpected "x" after ']' in registry "[::1]x""#,
    );
    check_err("[::1]:/app", r#"invalid port """#);
    check_err("exämple.com/app", "invalid character 'ä' in registry host");
}

#[test]
fn bad_tags() {
    check_err(
        "app:-x",
        r#"tag "-x" must start with a letter, digit or '_'"#,
    );
    check_err("app:.x", "must start with a letter, digit or '_'");
    check_err("app:x+y", "invalid character '+' in tag");
    check_err("app:x y", "invalid character ' ' in tag");
    check_err("app:ü", "invalid character 'ü' in tag");
    check_err(
        &format!("app:{}", "x".repeat(129)),
        "tag is 129 characters long (at most 128)",
    );
    check_err(
        &format!("app:{}", "x".repeat(1000)),
        "tag is 1000 characters long",
    );
}

#[test]
fn bad_digests_reuse_the_digest_error() {
    let err = "app@sha256:abc"
        .parse::<ImageRef>()
        .expect_err("short digest");
    assert_eq!(
        err.to_string(),
        r#"invalid image reference "app@sha256:abc": invalid digest "sha256:abc": expected 64 hex digits after "sha256:", found 3"#
    );
    let cause = "sha256:abc".parse::<Digest>().expect_err("short digest");
    assert_eq!(
        err,
        ReferenceError::Digest {
            input: "app@sha256:abc".into(),
            cause
        }
    );

    check_err(
        &format!("app@sha512:{}", "a".repeat(128)),
        r#"unsupported digest algorithm "sha512" (only sha256 is supported)"#,
    );
    check_err(
        &format!("app:1@sha256:{}", HEX.to_uppercase()),
        "upper-case hex digit 'E'",
    );
    check_err(&format!("app@{HEX}"), "missing algorithm prefix");
    check_err(
        &format!("app@{}@{}", digest(), digest()),
        "non-hex character '@'",
    );
}

#[test]
fn bare_image_ids_are_refused() {
    check_err(
        HEX,
        "a bare 64-hex-digit string is an image id, not a repository name",
    );
}

#[test]
fn name_length() {
    // docker.io/ + 245 = 255 characters: the limit.
    let at_limit = format!("user/{}", "a".repeat(240));
    check(&at_limit, &format!("docker.io/{at_limit}:latest"));
    let over = format!("user/{}", "a".repeat(241));
    check_err(
        &over,
        r#"name is 256 characters long with its registry "docker.io" (at most 255)"#,
    );
    // The implied `library/` counts too.
    check_err(&"a".repeat(240), "name is 258 characters long");
    let long_registry = format!("{}.example.com/app", "r".repeat(250));
    check_err(
        &long_registry,
        "name is 266 characters long with its registry",
    );
}

#[test]
fn string_conversions() {
    let parsed = ImageRef::try_from("alpine".to_owned()).expect("valid");
    assert_eq!(String::from(parsed), "docker.io/library/alpine:latest");
    assert!(ImageRef::try_from("Alpine".to_owned()).is_err());
}

#[test]
fn serde_round_trip() {
    let refs = vec![
        r("alpine"),
        r(&format!("localhost:5000/a/b:1@{}", digest())),
        r("[::1]:5000/app"),
    ];
    let json = serde_json::to_string(&refs).expect("serialize");
    assert_eq!(
        json,
        format!(
            r#"["docker.io/library/alpine:latest","localhost:5000/a/b:1@{}","[::1]:5000/app:latest"]"#,
            digest()
        )
    );
    let back: Vec<ImageRef> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, refs);
    // A familiar name deserializes to its qualified form.
    let familiar: ImageRef = serde_json::from_str(r#""alpine:3""#).expect("familiar name");
    assert_eq!(familiar, r("docker.io/library/alpine:3"));
}

#[test]
fn serde_refuses_invalid() {
    for bad in [r#""Alpine""#, r#""a//b""#, r#""""#, r#""app@sha256:abc""#] {
        let err = serde_json::from_str::<ImageRef>(bad)
            .expect_err("invalid reference must not deserialize");
        assert!(
            err.to_string().contains("invalid image reference"),
            "{bad}: {err}"
        );
    }
    assert!(serde_json::from_str::<ImageRef>("[]").is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_anything(s in "\\PC{0,60}") {
            if let Ok(parsed) = s.parse::<ImageRef>() {
                prop_assert_eq!(parsed.to_string().parse::<ImageRef>(), Ok(parsed.clone()));
            }
        }

        #[test]
        fn parsed_values_are_fixed_points(s in "[a-zA-Z0-9._:/@\\[\\]-]{0,40}") {
            if let Ok(parsed) = s.parse::<ImageRef>() {
                let shown = parsed.to_string();
                prop_assert_eq!(shown.parse::<ImageRef>(), Ok(parsed.clone()));
                let prefix = format!("{}/", parsed.registry());
                prop_assert!(shown.starts_with(&prefix), "{:?} does not start with {:?}", shown, prefix);
            }
        }

        #[test]
        fn grammar_shaped_names_parse(
            registry in proptest::option::of("(localhost|[a-z0-9]{1,8}\\.[a-z]{2,4})(:[0-9]{1,5})?"),
            // No '.' in the first component: that would make it a registry.
            path in "[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}){0,3}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut s = match &registry {
                Some(registry) => format!("{registry}/{path}"),
                None => path.clone(),
            };
            if let Some(tag) = &tag {
                s = format!("{s}:{tag}");
            }
            let parsed = s.parse::<ImageRef>();
            prop_assert!(parsed.is_ok(), "{:?} refused: {:?}", s, parsed);
        }
    }
}
