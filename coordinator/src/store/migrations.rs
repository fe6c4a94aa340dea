//! The PostgreSQL schema, as numbered migrations applied in order at start.
//!
//! Never edit a migration that has shipped: add the next one. [`super::SCHEMA_VERSION`]
//! is the number of the last one. Records are JSON (`jsonb`) like in the embedded
//! store; the columns beside them exist for lookups, ordering and fencing. Every
//! row written by a leader carries the lease `epoch` it was written under and the
//! database time it was written at, so an operator (and the fencing test) can prove
//! that no leader wrote after it was replaced.

/// `(version, SQL)`, in order.
pub(super) const MIGRATIONS: &[(u32, &str)] = &[(
    1,
    r#"
CREATE TABLE helix_lease (
    id          smallint PRIMARY KEY CHECK (id = 1),
    holder      text        NOT NULL,
    advertise   text        NOT NULL,
    epoch       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE TABLE helix_epochs (
    epoch       bigint PRIMARY KEY,
    holder      text        NOT NULL,
    advertise   text        NOT NULL,
    began_at    timestamptz NOT NULL
);
CREATE TABLE helix_coordinators (
    holder      text PRIMARY KEY,
    advertise   text        NOT NULL,
    version     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL
);
CREATE TABLE helix_tokens (
    secret_hash bytea PRIMARY KEY,
    record      jsonb       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL
);
CREATE TABLE helix_agents (
    id          uuid PRIMARY KEY,
    record      jsonb       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL
);
CREATE TABLE helix_builds (
    id          uuid PRIMARY KEY,
    created_at  bigint      NOT NULL,
    active      boolean     NOT NULL,
    record      jsonb       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL
);
CREATE INDEX helix_builds_recent ON helix_builds (created_at DESC, id DESC);
CREATE INDEX helix_builds_active ON helix_builds (created_at, id) WHERE active;
CREATE TABLE helix_jobs (
    id          uuid PRIMARY KEY,
    build       uuid        NOT NULL,
    record      jsonb       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL
);
CREATE INDEX helix_jobs_build ON helix_jobs (build);
CREATE TABLE helix_cache (
    key         text        NOT NULL,
    repository  text        NOT NULL,
    last_used   bigint      NOT NULL,
    record      jsonb       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL,
    PRIMARY KEY (key, repository)
);
-- Build output: pieces of each job's log at byte `start` of it; `stream_end` is
-- how much of the attempt's stream the log holds after the piece, so a coordinator
-- taking over resumes an agent's log stream where its predecessor stopped.
CREATE TABLE helix_logs (
    job         uuid        NOT NULL,
    start       bigint      NOT NULL,
    attempt     integer     NOT NULL,
    stream_end  bigint      NOT NULL,
    data        bytea       NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL,
    PRIMARY KEY (job, start)
);
-- Uploaded build contexts (`build submit --context`), so that any coordinator that
-- leads can serve them to agents: verified before they are stored, in chunks.
CREATE TABLE helix_contexts (
    digest      text PRIMARY KEY,
    size        bigint      NOT NULL,
    chunks      integer     NOT NULL,
    epoch       bigint      NOT NULL,
    written_at  timestamptz NOT NULL
);
CREATE TABLE helix_context_chunks (
    digest      text        NOT NULL REFERENCES helix_contexts (digest) ON DELETE CASCADE,
    seq         integer     NOT NULL,
    data        bytea       NOT NULL,
    PRIMARY KEY (digest, seq)
);
"#,
)];
