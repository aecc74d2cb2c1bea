-- Webhooks: endpoints and their signing secrets, one message per public event,
-- one delivery per (event, destination), and every attempt.

CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    org_id               uuid NOT NULL REFERENCES orgs (id),
    url                  text NOT NULL,
    description          text,
    -- Event types this endpoint receives; '{*}' = all of them.
    enabled_events       text[] NOT NULL DEFAULT '{*}',
    status               text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason      text,
    disabled_at          timestamptz,
    -- Exhausted deliveries in a row; any 2xx resets it; 10 disable the endpoint.
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Deleted endpoints are kept (their deliveries reference them) but never shown or sent to.
    deleted_at           timestamptz
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- Signing secrets of an endpoint: the current one (expires_at NULL) and, during a
-- rotation's overlap, older ones until they expire. Kept in clear: they must sign.
CREATE TABLE webhook_endpoint_secrets (
    id          bigserial PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_endpoint_secrets_endpoint ON webhook_endpoint_secrets (endpoint_id, id DESC);

-- One row per public event: the envelope every destination receives.
CREATE TABLE webhook_messages (
    event_id   uuid PRIMARY KEY,
    org_id     uuid NOT NULL REFERENCES orgs (id),
    call_id    uuid NOT NULL REFERENCES calls (id),
    event_type text NOT NULL,
    sequence   bigint NOT NULL,
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id                   uuid PRIMARY KEY,
    org_id               uuid NOT NULL REFERENCES orgs (id),
    event_id             uuid NOT NULL REFERENCES webhook_messages (event_id),
    -- NULL: the call's inline webhook_url, signed with the org's default secret.
    endpoint_id          uuid REFERENCES webhook_endpoints (id),
    -- endpoint_id, or the nil uuid for the inline destination: orders and dedupes per destination.
    destination          uuid GENERATED ALWAYS AS
                             (COALESCE(endpoint_id, '00000000-0000-0000-0000-000000000000'::uuid)) STORED,
    call_id              uuid NOT NULL REFERENCES calls (id),
    event_type           text NOT NULL,
    sequence             bigint NOT NULL,
    url                  text NOT NULL,
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'exhausted')),
    attempt_count        integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    -- A failure at this many attempts exhausts the delivery (8; a redelivery allows one more).
    max_attempts         integer NOT NULL DEFAULT 8 CHECK (max_attempts > 0),
    manual_retry_count   integer NOT NULL DEFAULT 0 CHECK (manual_retry_count >= 0),
    next_attempt_at      timestamptz,
    last_error           text,
    last_response_status integer,
    delivered_at         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Internal: a dispatcher attempting it holds it until then.
    lease_expires_at     timestamptz,
    -- Internal: parked behind an earlier pending delivery of the same call and destination;
    -- that one's completion enqueues it.
    waiting              boolean NOT NULL DEFAULT false,
    -- Internal: when a job for it was last published; NULL asks the sweeper to publish one
    -- now (a redelivery). The sweeper also re-publishes jobs overdue for too long.
    enqueued_at          timestamptz DEFAULT now(),
    CONSTRAINT webhook_deliveries_event_destination UNIQUE (event_id, destination)
);
CREATE INDEX webhook_deliveries_org ON webhook_deliveries (org_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC)
    WHERE endpoint_id IS NOT NULL;
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_id, destination, sequence);
-- The sweeper's query: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id           uuid NOT NULL REFERENCES webhook_deliveries (id),
    number                integer NOT NULL CHECK (number > 0),
    started_at            timestamptz NOT NULL,
    response_status       integer,
    -- The first KiB of the response body.
    response_body_excerpt text,
    duration_ms           integer NOT NULL CHECK (duration_ms >= 0),
    error                 text,
    PRIMARY KEY (delivery_id, number)
);
