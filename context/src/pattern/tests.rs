use super::*;

#[track_caller]
fn check_clean(input: &str, expected: &str) {
    assert_eq!(clean(input), expected, "clean({input:?})");
}

#[test]
fn clean_matches_go_filepath_clean() {
    // From Go's path/filepath cleantests.
    for (input, expected) in [
        ("", "."),
        ("abc", "abc"),
        ("abc/def", "abc/def"),
        ("a/b/c", "a/b/c"),
        (".", "."),
        ("..", ".."),
        ("../..", "../.."),
        ("../../abc", "../../abc"),
        ("/abc", "/abc"),
        ("/", "/"),
        ("abc/", "abc"),
        ("abc/def/", "abc/def"),
        ("/abc/", "/abc"),
        ("abc//def//ghi", "abc/def/ghi"),
        ("//abc", "/abc"),
        ("///abc", "/abc"),
        ("abc//", "abc"),
        ("abc/./def", "abc/def"),
        ("/./abc/def", "/abc/def"),
        ("abc/.", "abc"),
        ("abc/def/ghi/../jkl", "abc/def/jkl"),
        ("abc/def/../ghi/../jkl", "abc/jkl"),
        ("abc/def/..", "abc"),
        ("abc/def/../..", "."),
        ("/abc/def/../..", "/"),
        ("abc/def/../../..", ".."),
        ("/abc/def/../../..", "/"),
        ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
        ("/../abc", "/abc"),
        ("abc/./../def", "def"),
        ("abc//./../def", "def"),
        ("abc/../../././../def", "../../def"),
        ("!./foo", "!./foo"),
    ] {
        check_clean(input, expected);
    }
}

#[track_caller]
fn compiled(pattern: &str) -> Pattern {
    match Pattern::new(pattern) {
        Ok(Some(p)) => p,
        other => panic!("pattern {pattern:?} did not compile: {other:?}"),
    }
}

/// moby's `TestMatches` table, checked with its `MatchesExact` expectations: `exact`
/// must match the path itself, `inexact` only a parent (tested in ignore/tests.rs),
/// `fail` neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Exact,
    Inexact,
    Fail,
}
use Expect::*;

const MOBY_MATCHES: &[(&str, &str, Expect)] = &[
    ("**", "file", Exact),
    ("**", "file/", Exact),
    ("**/", "file", Exact),
    ("**/", "file/", Exact),
    ("**", "/", Exact),
    ("**/", "/", Exact),
    ("**", "dir/file", Exact),
    ("**/", "dir/file", Exact),
    ("**", "dir/file/", Exact),
    ("**/", "dir/file/", Exact),
    ("**/**", "dir/file", Exact),
    ("**/**", "dir/file/", Exact),
    ("dir/**", "dir/file", Exact),
    ("dir/**", "dir/file/", Exact),
    ("dir/**", "dir/dir2/file", Exact),
    ("dir/**", "dir/dir2/file/", Exact),
    ("**/dir", "dir", Exact),
    ("**/dir", "dir/file", Inexact),
    ("**/dir2/*", "dir/dir2/file", Exact),
    ("**/dir2/*", "dir/dir2/file/", Inexact),
    ("**/dir2/**", "dir/dir2/dir3/file", Exact),
    ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
    ("**file", "file", Exact),
    ("**file", "dir/file", Exact),
    ("**/file", "dir/file", Exact),
    ("**file", "dir/dir/file", Exact),
    ("**/file", "dir/dir/file", Exact),
    ("**/file*", "dir/dir/file", Exact),
    ("**/file*", "dir/dir/file.txt", Exact),
    ("**/file*txt", "dir/dir/file.txt", Exact),
    ("**/file*.txt", "dir/dir/file.txt", Exact),
    ("**/file*.txt*", "dir/dir/file.txt", Exact),
    ("**/**/*.txt", "dir/dir/file.txt", Exact),
    ("**/**/*.txt2", "dir/dir/file.txt", Fail),
    ("**/*.txt", "file.txt", Exact),
    ("**/**/*.txt", "file.txt", Exact),
    ("a**/*.txt", "a/file.txt", Exact),
    ("a**/*.txt", "a/dir/file.txt", Exact),
    ("a**/*.txt", "a/dir/dir/file.txt", Exact),
    ("a/*.txt", "a/dir/file.txt", Fail),
    ("a/*.txt", "a/file.txt", Exact),
    ("a/*.txt**", "a/file.txt", Exact),
    ("a[b-d]e", "ae", Fail),
    ("a[b-d]e", "ace", Exact),
    ("a[b-d]e", "aae", Fail),
    ("a[^b-d]e", "aze", Exact),
    (".*", ".foo", Exact),
    (".*", "foo", Fail),
    ("abc.def", "abcdef", Fail),
    ("abc.def", "abc.def", Exact),
    ("abc.def", "abcZdef", Fail),
    ("abc?def", "abcZdef", Exact),
    ("abc?def", "abcdef", Fail),
    ("**/foo/bar", "foo/bar", Exact),
    ("**/foo/bar", "dir/foo/bar", Exact),
    ("**/foo/bar", "dir/dir2/foo/bar", Exact),
    ("abc/**", "abc", Fail),
    ("abc/**", "abc/def", Exact),
    ("abc/**", "abc/def/ghi", Exact),
    ("**/.foo", ".foo", Exact),
    ("**/.foo", "bar.foo", Fail),
    ("a(b)c/def", "a(b)c/def", Exact),
    ("a(b)c/def", "a(b)c/xyz", Fail),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        Exact,
    ),
    (
        "dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        Exact,
    ),
    ("a\\\\", "a\\", Exact),
    ("a\\*b", "a*b", Exact),
];

#[test]
fn moby_matches_table_exact() {
    for &(pattern, path, expect) in MOBY_MATCHES {
        assert_eq!(
            compiled(pattern).matches(path),
            expect == Exact,
            "pattern {pattern:?} on {path:?}"
        );
    }
}

#[test]
fn moby_matches_table_with_parent_matching() {
    for &(pattern, path, expect) in MOBY_MATCHES {
        let rules = crate::ignore::IgnoreRules::from_patterns([pattern]).expect("compiles");
        assert_eq!(
            rules.is_excluded(path),
            expect != Fail,
            "pattern {pattern:?} on {path:?}"
        );
    }
}

/// moby's multi-pattern cases.
#[test]
fn moby_multi_pattern_table() {
    for (patterns, path, expected) in [
        (
            &["**", "!util/docker/web"][..],
            "util/docker/web/foo",
            false,
        ),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"][..],
            "util/docker/web/foo",
            true,
        ),
        (
            &[
                "**",
                "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            ][..],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
        (
            &["**", "!dist/*.whl"][..],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
    ] {
        let rules = crate::ignore::IgnoreRules::from_patterns(patterns).expect("compiles");
        assert_eq!(
            rules.is_excluded(path),
            expected,
            "{patterns:?} on {path:?}"
        );
    }
}

/// Go's `filepath.Match` tests (as moby copies them): pattern, name, match; `None`
/// for a pattern that must be refused.
const GO_MATCH: &[(&str, &str, Option<bool>)] = &[
    ("abc", "abc", Some(true)),
    ("*", "abc", Some(true)),
    ("*c", "abc", Some(true)),
    ("a*", "a", Some(true)),
    ("a*", "abc", Some(true)),
    ("a*/b", "abc/b", Some(true)),
    ("a*/b", "a/c/b", Some(false)),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Some(true)),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Some(false)),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Some(false)),
    ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
    ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
    ("ab[c]", "abc", Some(true)),
    ("ab[b-d]", "abc", Some(true)),
    ("ab[e-g]", "abc", Some(false)),
    ("ab[^c]", "abc", Some(false)),
    ("ab[^b-d]", "abc", Some(false)),
    ("ab[^e-g]", "abc", Some(true)),
    ("a\\*b", "a*b", Some(true)),
    ("a\\*b", "ab", Some(false)),
    ("a?b", "a☺b", Some(true)),
    ("a[^a]b", "a☺b", Some(true)),
    ("a???b", "a☺b", Some(false)),
    ("a[^a][^a][^a]b", "a☺b", Some(false)),
    ("[a-ζ]*", "α", Some(true)),
    ("*[a-ζ]", "A", Some(false)),
    ("a?b", "a/b", Some(false)),
    ("a*b", "a/b", Some(false)),
    ("[\\]a]", "]", Some(true)),
    ("[\\-]", "-", Some(true)),
    ("[x\\-]", "x", Some(true)),
    ("[x\\-]", "-", Some(true)),
    ("[x\\-]", "z", Some(false)),
    ("[\\-x]", "x", Some(true)),
    ("[\\-x]", "-", Some(true)),
    ("[\\-x]", "a", Some(false)),
    ("[]a]", "]", None),
    ("[-]", "-", None),
    ("[x-]", "x", None),
    ("[x-]", "-", None),
    ("[x-]", "z", None),
    ("[-x]", "x", None),
    ("[-x]", "-", None),
    ("[-x]", "a", None),
    ("\\", "a", None),
    ("[a-b-c]", "a", None),
    ("[", "a", None),
    ("[^", "a", None),
    ("[^bc", "a", None),
    ("a[", "a", None),
    ("a[", "ab", None),
    ("*x", "xxx", Some(true)),
];

#[test]
fn go_filepath_match_table() {
    for &(pattern, name, expected) in GO_MATCH {
        match (Pattern::new(pattern), expected) {
            (Ok(Some(p)), Some(expected)) => {
                // moby runs this table through its parent-matching `Matches`, which
                // only adds hits such as "a*" on "ab/c" via the parent "ab".
                let direct = p.matches(name);
                let via_parent = name.match_indices('/').any(|(i, _)| p.matches(&name[..i]));
                assert_eq!(
                    direct || via_parent,
                    expected,
                    "pattern {pattern:?} on {name:?}"
                );
            }
            (Err(_), None) => {}
            (result, expected) => {
                panic!("pattern {pattern:?}: got {result:?}, expected {expected:?}")
            }
        }
    }
}

#[test]
fn star_and_question_never_cross_a_slash_but_classes_may() {
    assert!(!compiled("*").matches("a/b"));
    assert!(!compiled("a?b").matches("a/b"));
    assert!(compiled("a[^x]b").matches("a/b"));
    assert!(compiled("a[/]b").matches("a/b"));
}

#[test]
fn double_star_in_the_middle_matches_zero_or_more_directories() {
    let p = compiled("a/**/b");
    for path in ["a/b", "a/x/b", "a/x/y/b"] {
        assert!(p.matches(path), "{path}");
    }
    for path in ["ab", "a/xb", "b", "a/b/c"] {
        assert!(!p.matches(path), "{path}");
    }
    // "a**b" is moby's "^a(.*/)?b$": "ab" and "a.../b", not "axb".
    let p = compiled("a**b");
    assert!(p.matches("ab"));
    assert!(p.matches("a/b"));
    assert!(p.matches("ax/y/b"));
    assert!(!p.matches("axb"));
}

#[test]
fn leading_double_star_with_plain_suffix_is_a_suffix_test_like_moby() {
    let p = compiled("**.go");
    assert!(p.matches("main.go"));
    assert!(p.matches("cmd/tool/main.go"));
    assert!(!p.matches("main.gox"));
    let p = compiled("**file");
    assert!(p.matches("dir/myfile"));
    // With a wildcard after it, moby uses its regexp, where "**" means whole
    // directories.
    let p = compiled("**file*");
    assert!(p.matches("dir/file.txt"));
    assert!(!p.matches("dir/myfile.txt"));
}

#[test]
fn escapes_are_literal() {
    assert!(compiled("\\[a\\]").matches("[a]"));
    assert!(compiled("a\\?").matches("a?"));
    assert!(!compiled("a\\?").matches("ab"));
    assert!(compiled("\\d").matches("d"));
    assert!(!compiled("\\d").matches("1"));
    assert!(compiled("a^b").matches("a^b"));
}

#[test]
fn invalid_patterns_say_what_to_write() {
    for (pattern, needle) in [
        ("[", "not closed"),
        ("a\\", "lone"),
        ("[z-a]", "backwards"),
        ("[-a]", "between two characters"),
        ("[a-]", "misplaced"),
        ("[]", "empty"),
        ("!", "lone \"!\""),
        ("  ! ", "lone \"!\""),
    ] {
        match Pattern::new(pattern) {
            Err(reason) => assert!(reason.contains(needle), "{pattern:?}: {reason}"),
            Ok(p) => panic!("{pattern:?} compiled: {p:?}"),
        }
    }
}

#[test]
fn blank_patterns_are_skipped_and_exclusions_parsed() {
    assert_eq!(Pattern::new("   "), Ok(None));
    let p = compiled("  !docs/README.md  ");
    assert!(p.is_exclusion());
    assert_eq!(p.text(), "docs/README.md");
    let p = compiled("docs//./a/");
    assert!(!p.is_exclusion());
    assert_eq!(p.text(), "docs/a");
}

#[track_caller]
fn check_below(pattern: &str, dir: &str, expected: bool) {
    assert_eq!(
        compiled(pattern).may_match_below(dir),
        expected,
        "{pattern:?} below {dir:?}"
    );
}

#[test]
fn may_match_below_is_exact_for_tokens_and_conservative_for_suffixes() {
    check_below("docs/README.md", "docs", true);
    check_below("docs/README.md", "doc", false);
    check_below("docs/README.md", "docs/README.md", false);
    check_below("docs", "docs", false);
    check_below("*/keep", "anything", true);
    check_below("*/keep", "a/b", false);
    check_below("**/keep", "a/b/c", true);
    check_below("a/**", "a", true);
    check_below("a/**", "b", false);
    check_below("[ab]/x", "a", true);
    check_below("[ab]/x", "c", false);
    check_below("**.go", "anything", true);
}
