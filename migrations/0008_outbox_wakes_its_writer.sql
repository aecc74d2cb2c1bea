-- Outbox wake-ups go to the relay of the process that wrote the rows.
--
-- Every binary runs a relay and names its database sessions
-- `ringer-<service>/<instance>`. A commit by such a session now notifies that
-- process's own channel, so one relay wakes, instead of every relay of every
-- service (they all raced for the same rows, and all but one found nothing: a
-- BEGIN, a SELECT and a ROLLBACK each, several times per call). Commits of any
-- other session (ringer-admin, tests, psql) notify the shared channel, which
-- every relay also listens on. Rows of a process that died before its relay
-- published them are found by the other relays' polling.
CREATE FUNCTION outbox_channel() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN current_setting('application_name') LIKE 'ringer-%/%'
        THEN 'ringer_outbox_' || left(md5(current_setting('application_name')), 16)
        ELSE 'ringer_outbox' END
$$;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(outbox_channel(), '');
    RETURN NULL;
END $$;
