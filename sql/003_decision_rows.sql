-- guardstream store, migration 003: decisions laid out for ingest (issue 6). `decisions` keeps its name and
-- columns for every reader: it is now a view over three tables.
--
-- * decision_rows: one row per decision, as `decisions` was, except that the scores are a DOUBLE[] in the
--   order of the decision's layout and the two MAP columns are gone (DuckDB inserts MAP values ~2.5x slower
--   than plain lists), and there is no primary key (an index over millions of random event ids made every
--   insert slower as the table grew: 8k rows/s at 10M decisions).
-- * score_layouts: what a guardrail scores and its thresholds, stored once per distinct layout instead of on
--   every row (a guardrail version under one policy has one layout).
-- * event_keys: the event_id dedup key, a 64-bit hash (the first 8 bytes of md5, little-endian: what
--   md5_number_upper computes) per event-time hour. A copy of an event has its event time, so a batch's keys
--   are checked against the hours it touches only (no index: the keys are appended in arrival order and
--   zone maps skip the rest); a key found there is compared by event_id with decision_rows of that hour, so
--   a hash collision never drops an event.

CREATE TABLE score_layouts (
    layout_key        UBIGINT PRIMARY KEY,
    score_categories  VARCHAR[] NOT NULL,      -- the scored categories, in the order of decision_rows.scores
    thresholds        MAP(VARCHAR, DOUBLE) NOT NULL
);

CREATE TABLE event_keys (
    hour       INTEGER NOT NULL,               -- event-time hour, hours since 1970-01-01 UTC
    event_key  UBIGINT NOT NULL                -- md5_number_upper(event_id)
);

CREATE TABLE decision_rows (
    event_id            VARCHAR NOT NULL,
    ts                  TIMESTAMPTZ NOT NULL,
    tenant              VARCHAR NOT NULL,
    user_id             VARCHAR NOT NULL,
    session_id          VARCHAR,
    turn                INTEGER,
    request_id          VARCHAR,
    stage               VARCHAR NOT NULL,
    guardrail           VARCHAR NOT NULL,
    guardrail_version   VARCHAR NOT NULL,
    policy_version      VARCHAR,
    decision            VARCHAR NOT NULL,
    categories          VARCHAR[],
    layout_key          UBIGINT NOT NULL,       -- score_layouts: the categories scored and the thresholds
    scores              DOUBLE[] NOT NULL,      -- in the order of score_layouts.score_categories
    max_score           DOUBLE,
    min_margin          DOUBLE,
    peak_ratio          DOUBLE NOT NULL,
    peak_category       VARCHAR,
    hugging_categories  VARCHAR[] NOT NULL,
    blocked_categories  VARCHAR[] NOT NULL,
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

-- A store from before this migration: carry its decisions over (one layout per distinct pair of scored
-- categories and thresholds), in the order they were stored.
INSERT INTO score_layouts
SELECT hash(score_categories, thresholds), score_categories, thresholds
FROM (SELECT DISTINCT map_keys(scores) AS score_categories, thresholds FROM decisions);

INSERT INTO decision_rows
SELECT event_id, ts, tenant, user_id, session_id, turn, request_id, stage, guardrail, guardrail_version,
       policy_version, decision, categories, hash(map_keys(scores), thresholds), map_values(scores), max_score,
       min_margin, peak_ratio, peak_category, hugging_categories, blocked_categories, judge_name, judge_verdict,
       judge_score, model, latency_ms, input_chars, output_chars, kafka_partition, kafka_offset, ingested_at
FROM decisions ORDER BY rowid;

INSERT INTO event_keys
SELECT (epoch_ms(ts) // 3600000)::INTEGER, md5_number_upper(event_id) FROM decisions ORDER BY rowid;

DROP TABLE decisions;

-- What analysts query, with the columns and types `decisions` always had.
CREATE VIEW decisions AS
SELECT r.event_id, r.ts, r.tenant, r.user_id, r.session_id, r.turn, r.request_id, r.stage, r.guardrail,
       r.guardrail_version, r.policy_version, r.decision, r.categories,
       map(l.score_categories, r.scores) AS scores, l.thresholds,
       r.max_score, r.min_margin, r.peak_ratio, r.peak_category, r.hugging_categories, r.blocked_categories,
       r.judge_name, r.judge_verdict, r.judge_score, r.model, r.latency_ms, r.input_chars, r.output_chars,
       r.kafka_partition, r.kafka_offset, r.ingested_at
FROM decision_rows r JOIN score_layouts l USING (layout_key);
