use helix_protocol::{AgentId, Job, JobEvent, Timestamp};

use super::*;
use crate::store::Record;

fn job(n: u8) -> Job {
    Job::new(
        JobId::from_bytes([n; 16]),
        BuildId::from_bytes([9; 16]),
        "linux/amd64".parse().expect("platform"),
        Timestamp(1),
    )
}

fn ids(records: &[Record]) -> Vec<JobId> {
    records
        .iter()
        .map(|r| match r {
            Record::Job(j) => j.id(),
            other => panic!("only jobs here: {other:?}"),
        })
        .collect()
}

#[test]
fn a_round_writes_each_record_once_in_its_last_version_where_it_first_came() {
    let (a, b) = (job(1), job(2));
    let mut a_assigned = a.clone();
    a_assigned
        .transition(JobEvent::Assign {
            agent: AgentId::from_bytes([7; 16]),
            at: Timestamp(2),
        })
        .expect("assign");
    let out = coalesce(vec![
        Record::Job(a.clone()),
        Record::Job(b.clone()),
        Record::Job(a_assigned.clone()),
    ]);
    assert_eq!(
        ids(&out),
        vec![a.id(), b.id()],
        "one write per job, in first-seen order"
    );
    let Record::Job(first) = &out[0] else {
        panic!("a job")
    };
    assert_eq!(first, &a_assigned, "the last version wins");
    assert!(coalesce(Vec::new()).is_empty());
}
