-- guardstream store, migration 001: decisions, windowed aggregates, alerts, dead letters, and the
-- processing checkpoint (consumed offsets and detector state written in the same transaction as the data).

-- Every accepted decision, once: event_id is the idempotency key. Raw text is never stored.
CREATE TABLE decisions (
    event_id            VARCHAR PRIMARY KEY,
    ts                  TIMESTAMPTZ NOT NULL,   -- event time (the decision's own)
    tenant              VARCHAR NOT NULL,
    user_id             VARCHAR NOT NULL,       -- pseudonymous when a pseudonym key is set
    session_id          VARCHAR,
    turn                INTEGER,
    request_id          VARCHAR,
    stage               VARCHAR NOT NULL,
    guardrail           VARCHAR NOT NULL,
    guardrail_version   VARCHAR NOT NULL,
    policy_version      VARCHAR,
    decision            VARCHAR NOT NULL,
    categories          VARCHAR[],
    scores              MAP(VARCHAR, DOUBLE) NOT NULL,
    thresholds          MAP(VARCHAR, DOUBLE) NOT NULL,
    max_score           DOUBLE,
    min_margin          DOUBLE,                 -- smallest threshold - score over the categories
    peak_ratio          DOUBLE NOT NULL,        -- highest score / threshold over the categories
    peak_category       VARCHAR,                -- ... and its category
    hugging_categories  VARCHAR[] NOT NULL,     -- 0 < margin <= band * threshold
    blocked_categories  VARCHAR[] NOT NULL,     -- margin <= 0
    judge_name          VARCHAR,
    judge_verdict       VARCHAR,
    judge_score         DOUBLE,
    model               VARCHAR,
    latency_ms          DOUBLE,
    input_chars         BIGINT,
    output_chars        BIGINT,
    kafka_partition     INTEGER NOT NULL,
    kafka_offset        BIGINT NOT NULL,
    ingested_at         TIMESTAMPTZ NOT NULL
);

-- Per user, category and event-time day (a tumbling window): the base of baselines and investigations.
CREATE TABLE user_category_daily (
    tenant      VARCHAR NOT NULL,
    user_id     VARCHAR NOT NULL,
    category    VARCHAR NOT NULL,
    day         DATE NOT NULL,
    decisions   BIGINT NOT NULL,
    blocks      BIGINT NOT NULL,
    hugs        BIGINT NOT NULL,
    score_sum   DOUBLE NOT NULL,
    PRIMARY KEY (tenant, user_id, category, day)
);

-- One row per alert: per user, detector and category, with its current lifecycle state.
CREATE TABLE alerts (
    alert_id         VARCHAR PRIMARY KEY,   -- deterministic: detector, tenant, user and category
    ts               TIMESTAMPTZ NOT NULL,  -- event time the alert first opened
    tenant           VARCHAR NOT NULL,
    user_id          VARCHAR NOT NULL,
    detector         VARCHAR NOT NULL,
    category         VARCHAR,
    status           VARCHAR NOT NULL,      -- open | resolved
    severity         VARCHAR NOT NULL,      -- warning | critical
    score            DOUBLE NOT NULL,
    reason           VARCHAR NOT NULL,      -- the latest evidence, in words
    evidence         JSON,
    action           JSON,                  -- what a gateway could do about it
    first_ts         TIMESTAMPTZ NOT NULL,  -- this episode's first evidence
    last_ts          TIMESTAMPTZ NOT NULL,  -- latest evidence
    changed_ts       TIMESTAMPTZ NOT NULL,  -- event time of the last published change
    updates          INTEGER NOT NULL,
    episode          INTEGER NOT NULL,      -- 2 once it was resolved and came back, ...
    published_score  DOUBLE NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Every lifecycle change (opened, updated, escalated, resolved, reopened), as published on the alerts topic.
CREATE TABLE alert_changes (
    change_id    VARCHAR PRIMARY KEY,
    alert_id     VARCHAR NOT NULL,
    change       VARCHAR NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,      -- event time of the change
    tenant       VARCHAR NOT NULL,
    user_id      VARCHAR NOT NULL,
    detector     VARCHAR NOT NULL,
    category     VARCHAR,
    status       VARCHAR NOT NULL,
    severity     VARCHAR NOT NULL,
    score        DOUBLE NOT NULL,
    reason       VARCHAR NOT NULL,
    evidence     JSON,
    action       JSON,
    episode      INTEGER NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published    BOOLEAN NOT NULL DEFAULT false  -- outbox flag: set once the alerts topic acknowledged it
);

-- Rejected input, by source coordinates. The original bytes go to the dead-letter topic, not here.
CREATE TABLE dead_letters (
    source_topic     VARCHAR NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     BIGINT NOT NULL,
    reason_code      VARCHAR NOT NULL,
    reason           VARCHAR NOT NULL,
    size_bytes       BIGINT NOT NULL,
    event_id         VARCHAR,
    ingested_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source_topic, kafka_partition, kafka_offset)
);

-- The checkpoint. next_offset is the first offset not yet reflected in this database.
CREATE TABLE consumer_offsets (
    topic            VARCHAR NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    next_offset      BIGINT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

CREATE TABLE detector_state (
    kafka_partition  INTEGER NOT NULL,
    tenant           VARCHAR NOT NULL,
    user_id          VARCHAR NOT NULL,
    state            BLOB NOT NULL,
    PRIMARY KEY (kafka_partition, tenant, user_id)
);

CREATE TABLE population_state (
    kafka_partition  INTEGER PRIMARY KEY,
    state            BLOB NOT NULL,
    watermark_ms     BIGINT NOT NULL            -- the partition's largest event time so far
);
