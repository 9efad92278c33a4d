-- guardstream store, migration 005: one user's detector state found by index (issue 25).
--
-- A worker keeps only recently active users in memory and fetches a returning user's state on their next
-- decision, for the users of a batch at once. DuckDB does not look rows up through the composite primary key
-- (a lookup by (kafka_partition, tenant, user_id) scans the table: ~20 ms at 1M users), but it does through a
-- single-column index: user_key, the first 8 bytes of md5(tenant || chr(31) || user_id), little-endian (what
-- md5_number_upper computes; streams/store.py user_key in Python), ~50 us per user. A hash collision only fetches
-- a row more, which the reader drops by its real key.
--
-- The table is copied rather than altered: DuckDB cannot create the index over rows updated in the same
-- transaction, and updating an indexed column row by row took 22 s at 300k users where the copy takes 0.6 s.

CREATE TABLE detector_state_keyed (
    kafka_partition  INTEGER NOT NULL,
    tenant           VARCHAR NOT NULL,
    user_id          VARCHAR NOT NULL,
    state            BLOB NOT NULL,
    user_key         UBIGINT,                  -- md5_number_upper(tenant || chr(31) || user_id)
    PRIMARY KEY (kafka_partition, tenant, user_id)
);
INSERT INTO detector_state_keyed
    SELECT kafka_partition, tenant, user_id, state, md5_number_upper(tenant || chr(31) || user_id)
    FROM detector_state;
DROP TABLE detector_state;
ALTER TABLE detector_state_keyed RENAME TO detector_state;
CREATE INDEX detector_state_user_key ON detector_state (user_key);
