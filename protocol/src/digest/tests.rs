use super::*;

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Checks that `input` is refused with a message containing `expected`.
#[track_caller]
fn check_err(input: &str, expected: &str) {
    match input.parse::<Digest>() {
        Ok(d) => panic!("{input:?} should be refused, parsed as {d}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(expected),
                "error for {input:?} is {msg:?}, expected it to contain {expected:?}"
            );
            assert!(
                msg.starts_with(&format!("invalid digest {input:?}: ")),
                "error does not name the input: {msg:?}"
            );
        }
    }
}

#[test]
fn sha256_of_known_vectors() {
    let empty = Digest::sha256_of(b"");
    assert_eq!(empty.as_str(), EMPTY);
    assert_eq!(empty.hex(), EMPTY_HEX);
    assert_eq!(empty.algorithm(), "sha256");
    assert_eq!(empty.to_string(), EMPTY);
    assert_eq!(
        Digest::sha256_of(b"abc").as_str(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn valid_digests_parse() {
    let d: Digest = EMPTY.parse().expect("valid");
    assert_eq!(d, Digest::sha256_of(b""));
    assert_eq!(d.hex(), EMPTY_HEX);
    let zeros = format!("sha256:{}", "0".repeat(64));
    assert_eq!(zeros.parse::<Digest>().expect("valid").as_str(), zeros);
}

#[test]
fn missing_algorithm() {
    check_err(
        EMPTY_HEX,
        r#"missing algorithm prefix (write "sha256:" before the hex digits)"#,
    );
    check_err(
        "",
        "missing algorithm prefix (expected sha256:<64 lower-case hex digits>)",
    );
    check_err("abc", "missing algorithm prefix");
    check_err(&format!(":{EMPTY_HEX}"), "missing algorithm before ':'");
}

#[test]
fn other_algorithms() {
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let err = sha512
        .parse::<Digest>()
        .expect_err("sha512 is not supported");
    assert_eq!(
        err.to_string(),
        format!(
            r#"invalid digest "{sha512}": unsupported digest algorithm "sha512" (only sha256 is supported)"#
        )
    );
    check_err(
        "sha512:abcd",
        r#"unsupported digest algorithm "sha512" (only sha256 is supported)"#,
    );
    check_err(
        &format!("md5:{}", "a".repeat(32)),
        r#"unsupported digest algorithm "md5""#,
    );
    check_err(
        &format!("sha256+b64:{EMPTY_HEX}"),
        r#"unsupported digest algorithm "sha256+b64""#,
    );
    check_err(
        &format!("SHA256:{EMPTY_HEX}"),
        r#"algorithm "SHA256" must be written in lower case, "sha256""#,
    );
    check_err(
        &format!(" sha256:{EMPTY_HEX}"),
        r#"unsupported digest algorithm " sha256""#,
    );
}

#[test]
fn wrong_length() {
    check_err(
        "sha256:",
        r#"expected 64 hex digits after "sha256:", found 0"#,
    );
    check_err(
        &format!("sha256:{}", &EMPTY_HEX[..63]),
        "expected 64 hex digits after \"sha256:\", found 63",
    );
    check_err(&format!("{EMPTY}0"), "found 65");
    check_err(&format!("sha256:{}", "a".repeat(128)), "found 128");
}

#[test]
fn bad_characters() {
    check_err(
        &format!("sha256:{}", EMPTY_HEX.to_uppercase()),
        r#"upper-case hex digit 'E' at position 1 after "sha256:" (digests are lower-case)"#,
    );
    check_err(
        &format!("sha256:{}B", &EMPTY_HEX[..63]),
        "upper-case hex digit 'B' at position 64",
    );
    check_err(
        &format!("sha256:{}g", &EMPTY_HEX[..63]),
        r#"non-hex character 'g' at position 64 after "sha256:""#,
    );
    check_err(
        &format!("{EMPTY}\n"),
        r#"non-hex character '\n' at position 65"#,
    );
    check_err(
        &format!("sha256: {}", &EMPTY_HEX[1..]),
        "non-hex character ' ' at position 1",
    );
    check_err(
        &format!("sha256:{}", "é".repeat(64)),
        "non-hex character 'é' at position 1",
    );
    check_err(
        &format!("{EMPTY}:00"),
        "non-hex character ':' at position 65",
    );
}

#[test]
fn string_conversions() {
    let d = Digest::try_from(EMPTY.to_owned()).expect("valid");
    assert_eq!(String::from(d), EMPTY);
    let err = Digest::try_from("sha512:00".to_owned()).expect_err("refused");
    assert_eq!(
        err,
        DigestError::Invalid {
            input: "sha512:00".into(),
            reason: r#"unsupported digest algorithm "sha512" (only sha256 is supported)"#.into(),
        }
    );
}

#[test]
fn serde_round_trip() {
    let d = Digest::sha256_of(b"");
    let json = serde_json::to_string(&d).expect("serialize");
    assert_eq!(json, format!("\"{EMPTY}\""));
    let back: Digest = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, d);
}

#[test]
fn serde_refuses_invalid() {
    for bad in [
        format!("\"{}\"", EMPTY.to_uppercase()),
        format!("\"{EMPTY_HEX}\""),
        "\"sha512:abcd\"".to_owned(),
        "\"sha256:abc\"".to_owned(),
        "\"\"".to_owned(),
    ] {
        let err =
            serde_json::from_str::<Digest>(&bad).expect_err("invalid digest must not deserialize");
        assert!(err.to_string().contains("invalid digest"), "{bad}: {err}");
    }
    assert!(serde_json::from_str::<Digest>("7").is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.as_str(), s.as_str());
            }
        }

        #[test]
        fn every_sha256_of_parses_back(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(d.as_str().parse::<Digest>(), Ok(d.clone()));
            prop_assert_eq!(d.hex().len(), 64);
        }

        #[test]
        fn only_lower_case_sha256_hex_is_accepted(hex in "[0-9a-fA-Fg]{60,68}") {
            let s = format!("sha256:{hex}");
            let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            prop_assert_eq!(s.parse::<Digest>().is_ok(), valid);
        }
    }
}
