-- The dialer's bookkeeping beside the Call object.

-- How many times a carrier was asked to place this call. The dialer's claim
-- (`queued → initiated`, which happens once per call) increments it, and a call
-- is dialled only after a claim; it stays 1 whatever the broker redelivers or
-- whichever replica dies.
ALTER TABLE calls ADD COLUMN dial_attempts integer NOT NULL DEFAULT 0 CHECK (dial_attempts >= 0);

-- The carrier's id for the placed call (for example a Twilio call SID), so that a
-- sweeper can ask the carrier to hang up a call whose dialer died.
ALTER TABLE calls ADD COLUMN carrier_call_id text;

-- Calls still on the line, counted per org at claim time for the concurrency limit.
-- (`calls_live` also holds answered calls that ended and wait for extraction and
-- billing; those no longer occupy a line.)
CREATE INDEX calls_on_the_line ON calls (org_id)
    WHERE ended_at IS NULL AND status IN ('initiated', 'ringing', 'in_progress');
