//! The order of a round, redirects within it, and the learned list in memory and on
//! disk.

use super::*;

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

#[track_caller]
fn check_rotation(leader: Option<&str>, configured: &[&str], learned: &[&str], want: &[&str]) {
    assert_eq!(
        rotation(leader, &strings(configured), &strings(learned)),
        strings(want)
    );
}

#[test]
fn a_round_tries_the_leader_then_the_configured_then_the_learned_each_once() {
    // One configured address, nothing learned: exactly the single-coordinator agent.
    check_rotation(None, &["a:1"], &[], &["a:1"]);
    check_rotation(Some("a:1"), &["a:1"], &[], &["a:1"]);
    // Configured order is kept.
    check_rotation(None, &["a:1", "b:1", "c:1"], &[], &["a:1", "b:1", "c:1"]);
    // The last leader first, wherever it came from.
    check_rotation(Some("b:1"), &["a:1", "b:1"], &[], &["b:1", "a:1"]);
    check_rotation(
        Some("c:1"),
        &["a:1"],
        &["b:1", "c:1"],
        &["c:1", "a:1", "b:1"],
    );
    // A leader no list names (reached by a redirect) still comes first.
    check_rotation(Some("z:1"), &["a:1"], &["b:1"], &["z:1", "a:1", "b:1"]);
    // Learned addresses come after the configured ones, without repeats.
    check_rotation(
        None,
        &["a:1", "b:1"],
        &["b:1", "c:1", "a:1"],
        &["a:1", "b:1", "c:1"],
    );
    check_rotation(None, &["a:1", "a:1"], &["a:1"], &["a:1"]);
    // Spelled differently: two entries (addresses are not resolved here).
    check_rotation(
        None,
        &["127.0.0.1:7443"],
        &["coord-a:7443"],
        &["127.0.0.1:7443", "coord-a:7443"],
    );
    check_rotation(None, &[], &[], &[]);
}

#[test]
fn a_round_follows_redirects_at_once_and_a_bounded_number_of_times() {
    let mut round = Round::new(strings(&["a:1", "b:1", "c:1"]));
    assert_eq!(round.next().as_deref(), Some("a:1"));
    // a is a standby naming c: c is next, and not tried again later.
    assert!(round.follow("c:1"));
    assert_eq!(round.next().as_deref(), Some("c:1"));
    assert_eq!(round.next().as_deref(), Some("b:1"));
    assert!(round.is_done());
    assert_eq!(round.next(), None);

    // A leader that is not in the list is dialed too.
    let mut round = Round::new(strings(&["a:1"]));
    assert_eq!(round.next().as_deref(), Some("a:1"));
    assert!(round.follow("z:1"));
    assert_eq!(round.next().as_deref(), Some("z:1"));
    assert_eq!(round.next(), None);

    // Two standbys naming each other: the round stops following after MAX_REDIRECTS
    // and goes on with what is left.
    let mut round = Round::new(strings(&["a:1", "b:1", "c:1"]));
    let mut dialed = Vec::new();
    let mut refused = 0;
    while let Some(addr) = round.next() {
        dialed.push(addr.clone());
        let other = if addr == "a:1" { "b:1" } else { "a:1" };
        if addr != "c:1" && !round.follow(other) {
            refused += 1;
        }
    }
    assert_eq!(dialed, ["a:1", "b:1", "a:1", "b:1", "c:1"]);
    assert_eq!(refused, 1);
    assert_eq!(MAX_REDIRECTS, 3);

    // A new round may follow again.
    let mut round = Round::new(strings(&["a:1"]));
    round.next();
    assert!(round.follow("b:1"));
}

#[test]
fn addresses_are_checked_by_shape() {
    for ok in [
        "127.0.0.1:7443",
        "coord.example.com:7443",
        "[::1]:7443",
        "c:1",
    ] {
        assert_eq!(check_address(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "coord",
        "coord:",
        ":7443",
        "coord:99999",
        "co rd:1",
        "a:1,b:1",
        "[]:1",
    ] {
        assert!(check_address(bad).is_err(), "{bad}");
    }
    let err = check_address("nowhere").expect_err("bad");
    assert!(err.starts_with("expected HOST:PORT"), "{err}");
    assert_eq!(
        valid_addresses(strings(&["a:1", "bad", "b:1", "a:1", ""]), "a test"),
        ["a:1", "b:1"]
    );
}

#[test]
fn the_learned_list_replaces_the_previous_one_and_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path());
    let configured = strings(&["a:1"]);

    let first = Coordinators::load(configured.clone(), &dir);
    assert_eq!(first.round(), ["a:1"]);
    assert!(first.learn(strings(&["a:1", "b:1", "c:1"]), "the leader"));
    assert_eq!(first.round(), ["a:1", "b:1", "c:1"]);
    // The same list again changes nothing; an empty list says nothing.
    assert!(!first.learn(strings(&["a:1", "b:1", "c:1"]), "the leader"));
    assert!(!first.learn(Vec::new(), "the leader"));
    assert_eq!(first.learned(), ["a:1", "b:1", "c:1"]);
    first.set_leader("c:1");
    assert_eq!(first.leader().as_deref(), Some("c:1"));
    assert_eq!(first.round(), ["c:1", "a:1", "b:1"]);

    // A restarted agent with one configured address knows the others.
    let restarted = Coordinators::load(configured.clone(), &dir);
    assert_eq!(restarted.configured(), ["a:1"]);
    assert_eq!(restarted.round(), ["a:1", "b:1", "c:1"]);
    assert_eq!(restarted.leader(), None, "the leader is not remembered");

    // A new list replaces the learned one (malformed entries dropped), never the
    // configured one.
    assert!(restarted.learn(strings(&["d:1", "not an address"]), "the leader"));
    assert_eq!(restarted.round(), ["a:1", "d:1"]);
    assert_eq!(dir.load_coordinators().expect("load"), ["d:1"]);
    let again = Coordinators::load(configured.clone(), &dir);
    assert_eq!(again.round(), ["a:1", "d:1"]);

    // A damaged file is ignored (and replaced by the next list).
    std::fs::write(dir.coordinators(), "{").expect("write");
    let damaged = Coordinators::load(configured.clone(), &dir);
    assert_eq!(damaged.round(), ["a:1"]);
    assert!(damaged.learn(strings(&["e:1"]), "the leader"));
    assert_eq!(dir.load_coordinators().expect("load"), ["e:1"]);

    // In memory only: nothing is written.
    let other = tempfile::tempdir().expect("tempdir");
    let memory = Coordinators::new(configured, Vec::new());
    assert!(memory.learn(strings(&["f:1"]), "the leader"));
    assert_eq!(memory.round(), ["a:1", "f:1"]);
    assert!(!DataDir::new(other.path()).coordinators().exists());
}
