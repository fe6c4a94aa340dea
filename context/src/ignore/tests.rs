use super::*;

#[track_caller]
fn rules(text: &str) -> IgnoreRules {
    match IgnoreRules::parse(text) {
        Ok(rules) => rules,
        Err(e) => panic!("{text:?}: {e}"),
    }
}

/// Checks each `(path, excluded)` against the rules of `text`.
#[track_caller]
fn check(text: &str, cases: &[(&str, bool)]) {
    let rules = rules(text);
    for &(path, excluded) in cases {
        assert_eq!(
            rules.is_excluded(path),
            excluded,
            "rules {text:?} on {path:?} (expected excluded={excluded})"
        );
    }
}

#[test]
fn docker_docs_example_file() {
    // https://docs.docker.com/build/concepts/context/#dockerignore-files
    check(
        "# comment\n*/temp*\n*/*/temp*\ntemp?\n",
        &[
            // */temp*: names starting with temp one level down, files and directories.
            ("somedir/temporary.txt", true),
            ("somedir/temp", true),
            ("somedir/temp/inside.txt", true),
            // ... but not at the root or two levels down for that line.
            ("temporary.txt", false),
            // */*/temp*: two levels down.
            ("somedir/subdir/temporary.txt", true),
            ("a/b/c/temporary.txt", false),
            // temp?: one character after temp, at the root.
            ("tempa", true),
            ("tempb", true),
            ("temp", false),
            ("tempab", false),
            ("tempab/x", false),
            // The comment line is no pattern.
            ("# comment", false),
            ("comment", false),
        ],
    );
}

#[test]
fn docker_docs_double_star() {
    check(
        "**/*.go\n",
        &[
            ("main.go", true),
            ("cmd/tool/main.go", true),
            ("go", false),
            ("main.go.txt", false),
            ("vendor/x.go/y", true),
        ],
    );
}

#[test]
fn docker_docs_exceptions() {
    check(
        "*.md\n!README.md\n",
        &[
            ("CHANGES.md", true),
            ("README.md", false),
            // `*.md` is anchored at the root.
            ("docs/guide.md", false),
        ],
    );
    // The last matching line decides.
    check(
        "*.md\n!README*.md\nREADME-secret.md\n",
        &[
            ("README-secret.md", true),
            ("README-public.md", false),
            ("README.md", false),
            ("other.md", true),
        ],
    );
    check(
        "*.md\nREADME-secret.md\n!README*.md\n",
        &[("README-secret.md", false), ("other.md", true)],
    );
    // An exception that comes first is overridden by a later plain line.
    check("!a.go\n*.go\n", &[("a.go", true), ("b.go", true)]);
}

#[test]
fn docker_docs_include_only_what_is_listed() {
    check(
        "*\n!src\n!Cargo.toml\n",
        &[
            ("Cargo.toml", false),
            ("src", false),
            ("src/main.rs", false),
            ("src/deep/mod.rs", false),
            ("target", true),
            ("target/debug/app", true),
            ("README.md", true),
        ],
    );
}

#[test]
fn a_directory_pattern_excludes_everything_below_unless_re_included() {
    check(
        "docs\n!docs/README.md\n",
        &[
            ("docs", true),
            ("docs/other.md", true),
            ("docs/sub/deep.md", true),
            ("docs/README.md", false),
            ("docsx", false),
        ],
    );
    // Re-including a directory re-includes what is below it.
    check(
        "node_modules\n!node_modules/keep\n",
        &[
            ("node_modules/keep/index.js", false),
            ("node_modules/other/index.js", true),
        ],
    );
    // Trailing slashes and wildcards on the directory (moby tests).
    check("docs/\n!docs/README.md\n", &[("docs/README.md", false)]);
    check("docs/*\n!docs/README.md\n", &[("docs/README.md", false)]);
    // And excluding again below a re-included directory.
    check(
        "build\n!build/keep\nbuild/keep/*.tmp\n",
        &[
            ("build/keep/a.txt", false),
            ("build/keep/a.tmp", true),
            ("build/other", true),
        ],
    );
}

#[test]
fn patterns_are_anchored_at_the_root() {
    check(
        "foo/bar\n/baz\n",
        &[
            ("foo/bar", true),
            ("foo/bar/x", true),
            ("x/foo/bar", false),
            ("baz", true),
            ("a/baz", false),
        ],
    );
}

#[test]
fn line_preprocessing_follows_moby_readall() {
    let text = "\u{feff}first\n# comment\n  # not a comment\n\n   \n  spaced  \n!  inverted  \n\
                /rooted/path/\na//b/./c/../d\n!/also/rooted\nwin\r\n";
    let patterns: Vec<String> = rules(text).patterns().collect();
    assert_eq!(
        patterns,
        [
            "first",
            "# not a comment",
            "spaced",
            "!inverted",
            "rooted/path",
            "a/b/d",
            "!also/rooted",
            "win",
        ]
    );
    // The BOM is only stripped at the very start, and a `#` only in column 1 starts a
    // comment.
    check(
        "\u{feff}first\n  # hash\n",
        &[("first", true), ("# hash", true)],
    );
}

#[test]
fn the_root_is_never_excluded() {
    let rules = rules("*\n**\n.\n");
    assert!(!rules.is_excluded(""));
    assert!(!rules.is_excluded("."));
    assert!(rules.is_excluded("anything"));
}

#[test]
fn empty_rules_exclude_nothing() {
    let rules = rules("# only a comment\n\n");
    assert!(rules.is_empty());
    assert!(!rules.is_excluded("a/b"));
    assert!(!rules.may_include_below("a"));
}

#[test]
fn errors_name_the_line_and_the_fix() {
    let err = IgnoreRules::parse("ok\n# fine\nbad[\n").expect_err("bad pattern");
    assert_eq!(err.line, 3);
    assert_eq!(err.pattern, "bad[");
    assert_eq!(
        err.to_string(),
        "line 3: invalid pattern \"bad[\": a \"[\" character class is not closed by \"]\" \
         (write \"\\[\" for a literal bracket)"
    );
    let err = IgnoreRules::parse("a\n!\n").expect_err("lone bang");
    assert_eq!(err.line, 2);
    assert!(err.to_string().contains("lone \"!\""), "{err}");
    let err = IgnoreRules::from_patterns(["ok", "[z-a]"]).expect_err("backwards");
    assert_eq!(err.line, 2);
}

#[test]
fn may_include_below_only_for_exceptions_that_reach_below() {
    let rules = rules("docs\nnode_modules\n!docs/README.md\n");
    assert!(rules.may_include_below("docs"));
    assert!(!rules.may_include_below("node_modules"));
    // Plain patterns never re-include anything.
    let rules2 = self::rules("docs/*.md\n");
    assert!(!rules2.may_include_below("docs"));
}

/// Pruning by `may_include_below` must never change the answer: when it says no for
/// an excluded directory, every path below is excluded too.
#[test]
fn pruning_is_sound_on_a_sample() {
    let texts = [
        "docs\n!docs/README.md\n",
        "*\n!src\n",
        "**\n!**/keep\n",
        "a\n!a/b\na/b/c\n",
        "*/temp*\n!*/temp*/keep\n",
        "**.log\n!important.log\n",
        "x\n!x\n",
    ];
    let paths = [
        "docs",
        "docs/README.md",
        "docs/x",
        "src",
        "src/a",
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "d/temp1",
        "d/temp1/keep",
        "d/temp1/x",
        "x",
        "x/y",
        "important.log",
        "k/keep",
        "k/l/keep",
        "k/l/m",
    ];
    for text in texts {
        let rules = rules(text);
        for dir in paths {
            if rules.is_excluded(dir) && !rules.may_include_below(dir) {
                for path in paths {
                    if path.starts_with(&format!("{dir}/")) {
                        assert!(
                            rules.is_excluded(path),
                            "{text:?}: pruned {dir:?} but {path:?} is included"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn load_prefers_containerignore() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(load(dir.path()).expect("no file"), None);

    fs::write(dir.path().join(DOCKERIGNORE), "from-docker\n").expect("write");
    let file = load(dir.path()).expect("load").expect("found");
    assert_eq!(file.name, DOCKERIGNORE);
    assert!(file.rules.is_excluded("from-docker"));

    fs::write(dir.path().join(CONTAINERIGNORE), "from-container\n").expect("write");
    let file = load(dir.path()).expect("load").expect("found");
    assert_eq!(file.name, CONTAINERIGNORE);
    assert!(file.rules.is_excluded("from-container"));
    assert!(!file.rules.is_excluded("from-docker"));
}

#[test]
fn load_refuses_a_linked_ignore_file_and_reports_bad_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::NamedTempFile::new().expect("temp file");
    std::os::unix::fs::symlink(outside.path(), dir.path().join(DOCKERIGNORE)).expect("link");
    let err = load(dir.path()).expect_err("link refused");
    assert!(
        err.to_string()
            .contains(".dockerignore: it is a symbolic link, not a regular file"),
        "{err}"
    );

    fs::remove_file(dir.path().join(DOCKERIGNORE)).expect("remove");
    fs::write(dir.path().join(DOCKERIGNORE), "fine\n[oops\n").expect("write");
    let err = load(dir.path()).expect_err("bad pattern");
    let message = err.to_string();
    assert!(
        message.contains(".dockerignore: line 2: invalid pattern \"[oops\""),
        "{message}"
    );
    assert!(message.ends_with("fix or remove that line"), "{message}");
}
