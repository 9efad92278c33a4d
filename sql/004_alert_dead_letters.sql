-- guardstream store, migration 004: an alert change the alerts topic refuses for good (issue 25).
--
-- A change too large for the broker (or the producer's max_request_size) used to fail the whole outbox on every
-- try, so no later alert reached the topic either. Now it is dead-lettered by itself: a summary of it goes to the
-- dead-letter topic, `dead_letter` records why, and the outbox never offers it again. `published` stays false
-- (the alerts topic never acknowledged it); the full change, evidence included, stays here for investigation.
ALTER TABLE alert_changes ADD COLUMN dead_letter VARCHAR;
