use super::*;

/// Parses `input` and checks its normalized form.
#[track_caller]
fn check(input: &str, expected: &str) {
    match input.parse::<Platform>() {
        Ok(p) => assert_eq!(p.to_string(), expected, "normalizing {input:?}"),
        Err(e) => panic!("{input:?} should parse as {expected:?}, got: {e}"),
    }
}

/// Checks that `input` is refused with a message containing `expected`.
#[track_caller]
fn check_err(input: &str, expected: &str) {
    match input.parse::<Platform>() {
        Ok(p) => panic!("{input:?} should be refused, parsed as {p}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(expected),
                "error for {input:?} is {msg:?}, expected it to contain {expected:?}"
            );
            assert!(
                msg.contains(&format!("{input:?}")),
                "error for {input:?} does not name the input: {msg:?}"
            );
            assert!(
                msg.contains("expected e.g. linux/amd64"),
                "error for {input:?} shows no example: {msg:?}"
            );
        }
    }
}

#[track_caller]
fn p(s: &str) -> Platform {
    s.parse().expect("test platform is valid")
}

#[test]
fn canonical_forms_parse_unchanged() {
    for s in [
        "linux/amd64",
        "linux/amd64/v2",
        "linux/amd64/v3",
        "linux/amd64/v4",
        "linux/arm64",
        "linux/arm64/v8.1",
        "linux/arm64/v8.9",
        "linux/arm64/v9",
        "linux/arm64/v9.5",
        "linux/arm64/v9.9",
        "linux/arm/v5",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm/v8",
        "linux/386",
        "linux/ppc64le",
        "linux/s390x",
        "linux/riscv64",
        "linux/loong64",
        "linux/mips64le",
        "windows/amd64",
        "darwin/arm64",
        "freebsd/amd64",
        "wasip1/wasm",
        "js/wasm",
    ] {
        check(s, s);
    }
}

#[test]
fn every_known_os_and_arch_parses() {
    for os in KNOWN_OS {
        check(&format!("{os}/amd64"), &format!("{os}/amd64"));
    }
    for arch in KNOWN_ARCH {
        let expected = if *arch == "arm" {
            "linux/arm/v7".to_owned()
        } else {
            format!("linux/{arch}")
        };
        check(&format!("linux/{arch}"), &expected);
    }
}

#[test]
fn case_is_normalized() {
    check("Linux/AMD64", "linux/amd64");
    check("LINUX/ARM64/V8", "linux/arm64");
    check("linux/Arm/V6", "linux/arm/v6");
    check("linux/arm64/V8.2", "linux/arm64/v8.2");
    check("Windows/X86_64/V3", "windows/amd64/v3");
    check("MacOS/AArch64", "darwin/arm64");
}

#[test]
fn os_aliases() {
    check("macos/arm64", "darwin/arm64");
    check("darwin/arm64", "darwin/arm64");
}

#[test]
fn amd64_aliases_and_variants() {
    check("linux/x86_64", "linux/amd64");
    check("linux/x86-64", "linux/amd64");
    check("linux/amd64/v1", "linux/amd64");
    check("linux/amd64/1", "linux/amd64");
    check("linux/x86_64/v1", "linux/amd64");
    check("linux/amd64/v2", "linux/amd64/v2");
    check("linux/amd64/2", "linux/amd64/v2");
    check("linux/x86_64/v3", "linux/amd64/v3");
    check("linux/x86-64/4", "linux/amd64/v4");
}

#[test]
fn arm64_aliases_and_variants() {
    check("linux/aarch64", "linux/arm64");
    check("linux/arm64/8", "linux/arm64");
    check("linux/arm64/v8", "linux/arm64");
    check("linux/arm64/v8.0", "linux/arm64");
    check("linux/arm64/8.0", "linux/arm64");
    check("linux/aarch64/v8", "linux/arm64");
    for minor in 1..=9 {
        check(
            &format!("linux/arm64/v8.{minor}"),
            &format!("linux/arm64/v8.{minor}"),
        );
        check(
            &format!("linux/arm64/8.{minor}"),
            &format!("linux/arm64/v8.{minor}"),
        );
        check(
            &format!("linux/aarch64/v9.{minor}"),
            &format!("linux/arm64/v9.{minor}"),
        );
    }
    check("linux/arm64/v9", "linux/arm64/v9");
    check("linux/arm64/9", "linux/arm64/v9");
    check("linux/arm64/v9.0", "linux/arm64/v9");
    check("linux/arm64/9.0", "linux/arm64/v9");
}

#[test]
fn arm_aliases_and_variants() {
    check("linux/arm", "linux/arm/v7");
    check("linux/armhf", "linux/arm/v7");
    check("linux/armel", "linux/arm/v6");
    check("linux/armhf/v7", "linux/arm/v7");
    check("linux/armhf/7", "linux/arm/v7");
    check("linux/armel/v6", "linux/arm/v6");
    for n in 5..=8 {
        check(&format!("linux/arm/{n}"), &format!("linux/arm/v{n}"));
        check(&format!("linux/arm/v{n}"), &format!("linux/arm/v{n}"));
    }
}

#[test]
fn i386_alias() {
    check("linux/i386", "linux/386");
    check("linux/I386", "linux/386");
    check("windows/386", "windows/386");
}

#[test]
fn default_variants_compare_equal() {
    assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
    assert_eq!(p("linux/aarch64"), p("linux/arm64/v8.0"));
    assert_eq!(p("linux/amd64/v1"), p("linux/x86_64"));
    assert_eq!(p("linux/arm"), p("linux/armhf"));
    assert_eq!(p("linux/arm/6"), p("linux/armel"));
    assert_ne!(p("linux/arm64/v8.2"), p("linux/arm64"));
    assert_ne!(p("linux/amd64/v2"), p("linux/amd64"));
}

#[test]
fn accessors() {
    let arm64 = p("Linux/aarch64/v8");
    assert_eq!(
        (arm64.os(), arm64.arch(), arm64.variant()),
        ("linux", "arm64", None)
    );
    let arm = p("linux/armhf");
    assert_eq!(
        (arm.os(), arm.arch(), arm.variant()),
        ("linux", "arm", Some("v7"))
    );
    let amd64 = p("linux/x86_64/3");
    assert_eq!(
        (amd64.os(), amd64.arch(), amd64.variant()),
        ("linux", "amd64", Some("v3"))
    );
}

#[test]
fn the_documented_error_message() {
    let err = "linux/amd65"
        .parse::<Platform>()
        .expect_err("amd65 is unknown");
    assert_eq!(
        err.to_string(),
        r#"invalid platform "linux/amd65": unknown architecture "amd65" (expected e.g. linux/amd64, linux/arm64/v8)"#
    );
    assert_eq!(
        err,
        PlatformError::Invalid {
            input: "linux/amd65".into(),
            reason: r#"unknown architecture "amd65""#.into()
        }
    );
}

#[test]
fn structural_errors() {
    check_err("", "empty platform");
    check_err("/amd64", "empty operating system");
    check_err("linux/", "empty architecture");
    check_err("/", "empty operating system");
    check_err("linux/arm64/", "empty variant");
    check_err("linux//v8", "empty architecture");
    check_err(
        "linux/arm/v7/extra",
        r#"unexpected "extra" after the variant"#,
    );
    check_err(
        "linux/arm/v7/a/b/c",
        r#"unexpected "a/b/c" after the variant"#,
    );
    check_err("linux/arm64/v8/", r#"unexpected "" after the variant"#);
}

#[test]
fn single_part_errors() {
    check_err("linux", r#"missing architecture after "linux""#);
    check_err(
        "amd64",
        r#"missing operating system before "amd64" (write e.g. linux/amd64)"#,
    );
    check_err("aarch64", "write e.g. linux/arm64");
    check_err("armhf", "write e.g. linux/arm");
    check_err(
        "foo",
        r#""foo" is neither an operating system nor an architecture"#,
    );
}

#[test]
fn unknown_os_and_arch() {
    check_err("linx/amd64", r#"unknown operating system "linx""#);
    check_err("osx/arm64", r#"unknown operating system "osx""#);
    check_err(" linux/amd64", r#"unknown operating system " linux""#);
    check_err(
        "windows(10.0.17763)/amd64",
        "os versions and features in parentheses are not supported",
    );
    check_err("linux/amd65", r#"unknown architecture "amd65""#);
    check_err("linux/x64", r#"unknown architecture "x64""#);
    check_err("linux/armv7", r#"unknown architecture "armv7""#);
    check_err("linux/amd64 ", r#"unknown architecture "amd64 ""#);
    check_err("linux/*", r#"unknown architecture "*""#);
    check_err("linux/ａｍｄ64", "unknown architecture");
}

#[test]
fn variant_errors() {
    check_err(
        "linux/amd64/v5",
        r#"unknown variant "v5" for amd64 (expected v1, v2, v3 or v4)"#,
    );
    check_err("linux/amd64/v0", r#"unknown variant "v0" for amd64"#);
    check_err(
        "linux/x86_64/haswell",
        r#"unknown variant "haswell" for amd64"#,
    );
    check_err("linux/arm64/v7", r#"unknown variant "v7" for arm64"#);
    check_err("linux/arm64/v10", r#"unknown variant "v10" for arm64"#);
    check_err("linux/arm64/v8.10", r#"unknown variant "v8.10" for arm64"#);
    check_err("linux/arm64/v8.", r#"unknown variant "v8." for arm64"#);
    check_err("linux/arm64/v8.x", r#"unknown variant "v8.x" for arm64"#);
    check_err(
        "linux/arm64/v8.1.2",
        r#"unknown variant "v8.1.2" for arm64"#,
    );
    check_err("linux/arm64/vv8", r#"unknown variant "vv8" for arm64"#);
    check_err(
        "linux/arm/v4",
        r#"unknown variant "v4" for arm (expected v5, v6, v7 or v8)"#,
    );
    check_err("linux/arm/v9", r#"unknown variant "v9" for arm"#);
    check_err(
        "linux/armhf/v6",
        r#""armhf" already means arm/v7, which conflicts with variant "v6""#,
    );
    check_err(
        "linux/armel/v7",
        r#""armel" already means arm/v6, which conflicts with variant "v7""#,
    );
    check_err("linux/armhf/v9", r#"unknown variant "v9" for arm"#);
    check_err(
        "linux/s390x/v2",
        r#"architecture "s390x" takes no variant, got "v2""#,
    );
    check_err("linux/386/v1", r#"architecture "386" takes no variant"#);
    check_err(
        "linux/i386/sse2",
        r#"architecture "386" takes no variant, got "sse2""#,
    );
    check_err(
        "linux/riscv64/rva22u64",
        r#"architecture "riscv64" takes no variant"#,
    );
}

#[test]
fn can_build_same_platform() {
    for s in [
        "linux/amd64",
        "linux/amd64/v3",
        "linux/arm64",
        "linux/arm64/v9.2",
        "linux/arm/v7",
        "linux/s390x",
    ] {
        assert!(p(s).can_build(&p(s)), "{s} builds itself");
    }
    // Spelling does not matter: the podman#27586 case.
    assert!(p("linux/arm64/v8").can_build(&p("linux/arm64")));
    assert!(p("linux/aarch64").can_build(&p("linux/arm64/v8")));
    assert!(p("linux/x86_64").can_build(&p("linux/amd64/v1")));
}

#[test]
fn can_build_lower_amd64_levels() {
    let host = p("linux/amd64/v3");
    assert!(host.can_build(&p("linux/amd64/v2")));
    assert!(host.can_build(&p("linux/amd64")));
    assert!(!host.can_build(&p("linux/amd64/v4")));
    assert!(p("linux/amd64/v4").can_build(&p("linux/amd64/v3")));
    assert!(!p("linux/amd64").can_build(&p("linux/amd64/v2")));
    assert!(!p("linux/amd64/v2").can_build(&p("linux/amd64/v3")));
}

#[test]
fn can_build_lower_arm64_versions() {
    let v9 = p("linux/arm64/v9");
    assert!(v9.can_build(&p("linux/arm64/v8.2")));
    assert!(v9.can_build(&p("linux/arm64")));
    assert!(v9.can_build(&p("linux/arm64/v8.5")));
    assert!(
        !v9.can_build(&p("linux/arm64/v8.6")),
        "v9.0 branched from v8.5"
    );
    assert!(!v9.can_build(&p("linux/arm64/v9.1")));

    let v9_2 = p("linux/arm64/v9.2");
    assert!(v9_2.can_build(&p("linux/arm64/v9.1")));
    assert!(v9_2.can_build(&p("linux/arm64/v9")));
    assert!(v9_2.can_build(&p("linux/arm64/v8.7")));
    assert!(!v9_2.can_build(&p("linux/arm64/v8.8")));
    assert!(!v9_2.can_build(&p("linux/arm64/v9.3")));

    let v8_4 = p("linux/arm64/v8.4");
    assert!(v8_4.can_build(&p("linux/arm64/v8.2")));
    assert!(v8_4.can_build(&p("linux/arm64/v8")));
    assert!(!v8_4.can_build(&p("linux/arm64/v8.5")));
    assert!(!v8_4.can_build(&p("linux/arm64/v9")));

    assert!(!p("linux/arm64").can_build(&p("linux/arm64/v8.1")));
    assert!(p("linux/arm64/v9.9").can_build(&p("linux/arm64/v8.9")));
}

#[test]
fn can_build_never_crosses_arch_or_os() {
    let no = [
        ("linux/arm64", "linux/arm/v7"),
        ("linux/arm64/v9", "linux/arm/v8"),
        ("linux/amd64", "linux/386"),
        ("linux/amd64/v4", "linux/386"),
        ("linux/amd64", "linux/arm64"),
        ("linux/arm64", "linux/amd64"),
        ("linux/amd64", "windows/amd64"),
        ("windows/amd64", "linux/amd64"),
        ("darwin/arm64", "linux/arm64"),
        ("linux/386", "linux/amd64"),
        ("linux/arm/v7", "linux/arm64"),
        // Only amd64 and arm64 levels are ordered; arm/v7 is not assumed to build arm/v6.
        ("linux/arm/v7", "linux/arm/v6"),
        ("linux/arm/v6", "linux/arm/v7"),
    ];
    for (host, job) in no {
        assert!(!p(host).can_build(&p(job)), "{host} must not build {job}");
    }
}

#[test]
fn display_parse_round_trip() {
    for s in [
        "linux/x86_64/v1",
        "Linux/AARCH64/8.3",
        "linux/armel",
        "macos/arm64",
        "linux/arm64/v9.0",
        "windows/i386",
        "linux/amd64/4",
    ] {
        let once = p(s);
        let again = p(&once.to_string());
        assert_eq!(once, again, "{s} -> {once} must be stable");
        assert_eq!(once.to_string(), again.to_string());
    }
}

#[test]
fn string_conversions() {
    let from_string = Platform::try_from("linux/aarch64".to_owned()).expect("valid");
    assert_eq!(String::from(from_string), "linux/arm64");
    assert!(Platform::try_from("linux/amd65".to_owned()).is_err());
}

#[test]
fn serde_round_trip() {
    let platforms = vec![p("linux/amd64"), p("linux/arm64/v8.2"), p("linux/armhf")];
    let json = serde_json::to_string(&platforms).expect("serialize");
    assert_eq!(json, r#"["linux/amd64","linux/arm64/v8.2","linux/arm/v7"]"#);
    let back: Vec<Platform> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, platforms);
}

#[test]
fn serde_normalizes_and_refuses() {
    let normalized: Platform =
        serde_json::from_str(r#""linux/aarch64/v8""#).expect("alias deserializes");
    assert_eq!(normalized, p("linux/arm64"));

    for bad in [
        r#""linux/amd65""#,
        r#""linux""#,
        r#""""#,
        r#""linux/arm/v7/x""#,
        "42",
        "null",
    ] {
        let err = serde_json::from_str::<Platform>(bad)
            .expect_err("invalid platform must not deserialize");
        if bad.starts_with('"') && bad != r#""""# {
            assert!(err.to_string().contains("invalid platform"), "{bad}: {err}");
        }
    }
    let err = serde_json::from_str::<Platform>(r#""linux/amd65""#).expect_err("unknown arch");
    assert!(
        err.to_string().contains(r#"unknown architecture "amd65""#),
        "{err}"
    );
}

#[test]
fn parse_list_normalizes_and_dedups_in_order() {
    let list = Platform::parse_list("linux/arm64,linux/amd64,linux/aarch64/v8,linux/x86_64")
        .expect("valid list");
    assert_eq!(list, vec![p("linux/arm64"), p("linux/amd64")]);

    let list = parse_list(" linux/amd64 , linux/arm/v7,linux/armhf, linux/arm64/v8.2 ")
        .expect("valid list");
    let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["linux/amd64", "linux/arm/v7", "linux/arm64/v8.2"]);

    assert_eq!(
        parse_list("linux/s390x").expect("single"),
        vec![p("linux/s390x")]
    );
}

#[test]
fn parse_list_errors_name_the_bad_item() {
    let err = parse_list("linux/amd64,linux/amd65,linux/arm64").expect_err("bad item");
    assert_eq!(
        err.to_string(),
        r#"invalid platform "linux/amd65": unknown architecture "amd65" (expected e.g. linux/amd64, linux/arm64/v8)"#
    );

    let err = parse_list("linux/amd64,,linux/arm64").expect_err("empty item");
    assert_eq!(
        err.to_string(),
        r#"invalid platform list "linux/amd64,,linux/arm64": item 2 is empty (expected e.g. linux/amd64,linux/arm64)"#
    );
    let err = parse_list("linux/amd64,").expect_err("trailing comma");
    assert!(err.to_string().contains("item 2 is empty"), "{err}");
    for empty in ["", "   "] {
        let err = parse_list(empty).expect_err("empty list");
        assert!(err.to_string().contains("no platform given"), "{err}");
    }
    let err = parse_list("linux/amd64,linux").expect_err("incomplete item");
    assert!(
        err.to_string()
            .contains(r#"invalid platform "linux": missing architecture"#),
        "{err}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_and_parsed_values_are_fixed_points(s in "\\PC{0,40}") {
            if let Ok(platform) = s.parse::<Platform>() {
                let shown = platform.to_string();
                prop_assert_eq!(shown.parse::<Platform>(), Ok(platform.clone()));
                prop_assert!(platform.can_build(&platform));
            }
            let _ = parse_list(&s);
        }

        #[test]
        fn plausible_inputs_never_panic(
            os in "(linux|Linux|windows|macos|x|)",
            arch in "(amd64|x86_64|x86-64|aarch64|arm64|arm|armhf|armel|i386|386|s390x|)",
            variant in proptest::option::of("v?[0-9]{0,2}(\\.[0-9]{0,2})?"),
        ) {
            let s = match &variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            };
            if let Ok(platform) = s.parse::<Platform>() {
                prop_assert_eq!(platform.to_string().parse::<Platform>(), Ok(platform.clone()));
            }
        }

        #[test]
        fn can_build_is_reflexive_and_antisymmetric(
            a in proptest::sample::select(ALL_VARIANTS),
            b in proptest::sample::select(ALL_VARIANTS),
        ) {
            let (a, b) = (p(a), p(b));
            prop_assert!(a.can_build(&a));
            if a != b && a.can_build(&b) {
                prop_assert!(!b.can_build(&a), "{} and {} build each other", a, b);
            }
        }
    }

    const ALL_VARIANTS: &[&str] = &[
        "linux/amd64",
        "linux/amd64/v2",
        "linux/amd64/v3",
        "linux/amd64/v4",
        "linux/arm64",
        "linux/arm64/v8.1",
        "linux/arm64/v8.5",
        "linux/arm64/v8.6",
        "linux/arm64/v8.9",
        "linux/arm64/v9",
        "linux/arm64/v9.3",
        "linux/arm64/v9.9",
        "linux/arm/v5",
        "linux/arm/v7",
        "linux/386",
        "windows/amd64",
    ];
}
