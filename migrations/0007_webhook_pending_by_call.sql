-- The dispatcher's hot queries look for a call's *pending* deliveries: the
-- claim (is an earlier one still pending?), the record (which one is next?)
-- and the fan-out (which parked ones to wake, which to publish again). With
-- only `webhook_deliveries_due` (every pending delivery, by due time) matching
-- `status = 'pending'`, the planner could scan that whole index for one call
-- (seen in webhook-bench: 4,000 index entries read per fan-out on a table not
-- yet analyzed). This index answers them by call and destination directly.
CREATE INDEX webhook_deliveries_pending_call ON webhook_deliveries (call_id, destination, sequence)
    WHERE status = 'pending';
