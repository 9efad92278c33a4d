-- guardstream store, migration 002: analysts' verdicts on alerts (feed the per-detector precision metric,
-- NIST AI RMF MEASURE 3.3 feedback and 4.3 field-measured improvement or decline).
CREATE TABLE verdicts (
    alert_id    VARCHAR PRIMARY KEY,          -- the latest verdict on an alert wins
    verdict     VARCHAR NOT NULL,             -- confirmed | false_positive
    analyst     VARCHAR,
    note        VARCHAR,
    created_at  TIMESTAMPTZ NOT NULL
);
