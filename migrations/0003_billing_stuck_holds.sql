-- The stuck-hold sweeper looks for holds still reserved long after their call
-- was created; only a small fraction of calls is reserved at any time.
CREATE INDEX calls_reserved_created ON calls (created_at) WHERE reservation_status = 'reserved';
