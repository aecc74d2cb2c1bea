-- Organisations, keys, numbers, calls, the outbox, consumer bookkeeping,
-- idempotency keys, and the money tables (balances + ledger).

CREATE TABLE orgs (
    id                          uuid PRIMARY KEY,
    name                        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Per-minute price of connected time, in milli-cents (NULL = the configured default).
    rate_per_minute_milli_cents bigint CHECK (rate_per_minute_milli_cents >= 0),
    -- Live-call limit (NULL = the configured default).
    max_concurrent_calls        integer CHECK (max_concurrent_calls > 0),
    -- Signing secret for inline webhook_url deliveries (must be usable to sign, so not hashed).
    webhook_secret              text NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES orgs (id),
    name         text NOT NULL DEFAULT '',
    -- The first characters of the key, shown to people to tell keys apart.
    prefix       text NOT NULL,
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash     bytea NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_org ON api_keys (org_id);

CREATE TABLE phone_numbers (
    id                 uuid PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id),
    e164               text NOT NULL CHECK (e164 ~ '^\+[1-9][0-9]{6,14}$'),
    friendly_name      text NOT NULL,
    country_code       text NOT NULL,
    number_type        text NOT NULL CHECK (number_type IN ('local', 'toll_free', 'mobile')),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'released')),
    monthly_cost_cents integer NOT NULL DEFAULT 0 CHECK (monthly_cost_cents >= 0),
    purchased_at       timestamptz NOT NULL DEFAULT now(),
    released_at        timestamptz
);
-- A number is active in at most one org at a time.
CREATE UNIQUE INDEX phone_numbers_active_e164 ON phone_numbers (e164) WHERE status = 'active';
CREATE INDEX phone_numbers_org ON phone_numbers (org_id, purchased_at, id);

CREATE TABLE calls (
    id                         uuid PRIMARY KEY,
    org_id                     uuid NOT NULL REFERENCES orgs (id),
    to_number                  text NOT NULL,
    from_number                text NOT NULL,
    status                     text NOT NULL DEFAULT 'queued' CHECK (status IN
        ('queued', 'initiated', 'ringing', 'in_progress', 'completed', 'no_answer', 'busy', 'canceled', 'failed')),
    direction                  text NOT NULL DEFAULT 'outbound',
    prompt                     text NOT NULL,
    context                    jsonb NOT NULL DEFAULT '{}',
    returns                    jsonb,
    language                   text NOT NULL DEFAULT 'en',
    result                     jsonb,
    result_status              text NOT NULL DEFAULT 'pending' CHECK (result_status IN ('pending', 'completed', 'failed')),
    result_error               text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    started_at                 timestamptz,
    answered_at                timestamptz,
    ended_at                   timestamptz,
    duration_seconds           integer,
    billed_duration_seconds    integer CHECK (billed_duration_seconds >= 0),
    billing_amount_milli_cents bigint CHECK (billing_amount_milli_cents >= 0),
    reservation_status         text NOT NULL DEFAULT 'reserved' CHECK (reservation_status IN ('reserved', 'settled', 'released')),
    webhook_url                text,
    webhook_status             text NOT NULL DEFAULT 'none' CHECK (webhook_status IN ('none', 'pending', 'delivered', 'failed')),
    webhook_error              text,
    error_code                 text,
    error_message              text,
    hangup_cause               text,
    answered_by                text,
    metadata                   jsonb,
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    voicemail_action           text NOT NULL DEFAULT 'hangup' CHECK (voicemail_action IN ('hangup', 'leave_message')),
    max_duration_seconds       integer NOT NULL CHECK (max_duration_seconds > 0),
    tools                      jsonb,
    -- Internal columns.
    hold_milli_cents           bigint NOT NULL CHECK (hold_milli_cents >= 0),
    rate_per_minute_milli_cents bigint NOT NULL CHECK (rate_per_minute_milli_cents >= 0),
    event_seq                  bigint NOT NULL DEFAULT 0,
    -- Set once, by the completion join, when the terminal event is written.
    completed_at               timestamptz,
    -- The dialer replica that owns the live call, and until when its lease holds.
    dialer_id                  text,
    lease_expires_at           timestamptz,
    -- Set by POST /v1/calls/{id}/cancel while the dialer owns the call; the dialer hangs up.
    cancel_requested_at        timestamptz
);
CREATE INDEX calls_org_created ON calls (org_id, created_at DESC, id DESC);
CREATE INDEX calls_live ON calls (org_id) WHERE status IN ('initiated', 'ringing', 'in_progress');
CREATE INDEX calls_lease ON calls (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

CREATE TABLE call_transcripts (
    call_id     uuid NOT NULL REFERENCES calls (id),
    sequence_no integer NOT NULL CHECK (sequence_no >= 0),
    role        text NOT NULL CHECK (role IN ('agent', 'callee')),
    text        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    duration_ms integer NOT NULL CHECK (duration_ms >= 0),
    -- Where the text came from: 'simulated', 'tts', 'stt', 'dtmf', 'llm', ...
    source      text NOT NULL,
    PRIMARY KEY (call_id, sequence_no)
);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    traceparent  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relays when outbox rows commit (NOTIFY is delivered at commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ringer_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE processed_messages (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE idempotency_keys (
    org_id          uuid NOT NULL REFERENCES orgs (id),
    key             text NOT NULL,
    request_method  text NOT NULL,
    request_path    text NOT NULL,
    -- SHA-256 of the request body: the same key with another body is a conflict.
    request_hash    bytea NOT NULL,
    -- 0 while the first request is still running (in its transaction).
    response_status integer NOT NULL DEFAULT 0,
    response_body   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Money: every amount in integer milli-cents (1/1000 of a US cent).
-- An org's balance may be spread over several bucket rows (sum on read) so that
-- one busy org does not serialise on a single row.
CREATE TABLE balances (
    org_id                uuid NOT NULL REFERENCES orgs (id),
    bucket                smallint NOT NULL DEFAULT 0 CHECK (bucket >= 0),
    available_milli_cents bigint NOT NULL DEFAULT 0,
    reserved_milli_cents  bigint NOT NULL DEFAULT 0,
    CONSTRAINT balances_available_nonnegative CHECK (available_milli_cents >= 0),
    CONSTRAINT balances_reserved_nonnegative CHECK (reserved_milli_cents >= 0),
    PRIMARY KEY (org_id, bucket)
);

-- Append-only, double-entry: each row moves `amount` from one account to another.
-- Accounts: 'funding' (outside money), 'available', 'reserved', 'revenue'.
--   credit:       funding   -> available
--   hold:         available -> reserved
--   hold_release: reserved  -> available
--   charge:       reserved  -> revenue
CREATE TABLE ledger_entries (
    id                 bigserial PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id),
    bucket             smallint NOT NULL DEFAULT 0,
    -- Deferred: the hold is taken before the call row is inserted, in one transaction.
    call_id            uuid REFERENCES calls (id) DEFERRABLE INITIALLY DEFERRED,
    kind               text NOT NULL CHECK (kind IN ('credit', 'hold', 'hold_release', 'charge')),
    from_account       text NOT NULL CHECK (from_account IN ('funding', 'available', 'reserved', 'revenue')),
    to_account         text NOT NULL CHECK (to_account IN ('funding', 'available', 'reserved', 'revenue')),
    amount_milli_cents bigint NOT NULL CHECK (amount_milli_cents > 0),
    description        text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (from_account <> to_account)
);
-- At most one hold, one release and one charge per call.
CREATE UNIQUE INDEX ledger_entries_one_per_call ON ledger_entries (call_id, kind) WHERE call_id IS NOT NULL;
CREATE INDEX ledger_entries_org ON ledger_entries (org_id, id DESC);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();
