-- guardstream store, migration 006: erasure requests (`guardstream forget`).
--
-- Workers keep each partition's users in memory and write a user's state back with their next batch. An erasure
-- bumps the epoch of the partitions the user had state or alerts in; a worker's batch carries the epochs it loaded
-- and is refused (fenced) when one differs, so the worker reloads those partitions, without the user, first.
-- Kept in the file so that a writer restarted between the erasure and the batch still refuses it.
CREATE TABLE partition_epochs (
    kafka_partition  INTEGER PRIMARY KEY,
    epoch            BIGINT NOT NULL
);
