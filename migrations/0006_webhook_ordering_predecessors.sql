-- Ordering across fan-outs: a call's public events can reach the dispatcher out
-- of order (a message redelivered after a dispatcher died, say). Each stored
-- event records how many public events of its call come before it, known from
-- the Call it carries (queued; ringing if started_at; answered if answered_at),
-- so that a delivery waits until every earlier event has been fanned out, not
-- only until the earlier deliveries that already exist are finished.
-- NULL (events stored before this migration): no such wait.
ALTER TABLE webhook_messages ADD COLUMN predecessors integer CHECK (predecessors >= 0);
CREATE INDEX webhook_messages_call ON webhook_messages (call_id, sequence);
