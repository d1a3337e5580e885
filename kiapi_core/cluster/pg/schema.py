"""The cluster's tables. Times are the database's clock (``now()``), so hosts' clocks may drift."""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS kiapi_schema (version integer NOT NULL);

CREATE TABLE IF NOT EXISTS kiapi_jobs (
    seq bigserial UNIQUE,
    id text PRIMARY KEY,
    status text NOT NULL,
    type text NOT NULL,
    capability text NOT NULL,
    model text NOT NULL,
    created_at double precision NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    finished_at double precision,
    idem_key text UNIQUE,
    idem_fp text,
    need_gb double precision NOT NULL DEFAULT 0,
    load_gb double precision NOT NULL DEFAULT 0,
    request bytea NOT NULL,
    owner text,
    attempt integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    error jsonb,
    data jsonb NOT NULL
);
-- Added after schema 1 was released: hosts upgrading in place get it here.
ALTER TABLE kiapi_jobs ADD COLUMN IF NOT EXISTS light boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS kiapi_jobs_queued ON kiapi_jobs (seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS kiapi_jobs_running ON kiapi_jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS kiapi_jobs_finished ON kiapi_jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS kiapi_hosts (
    id text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    state jsonb NOT NULL
);

CREATE TABLE IF NOT EXISTS kiapi_files (
    id text PRIMARY KEY,
    record jsonb NOT NULL,
    expires_at double precision,
    complete boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS kiapi_file_chunks (
    file_id text NOT NULL REFERENCES kiapi_files (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);

-- Input pins (pg/pins.py): a file an active job reads outlives deletes and its expiry.
CREATE TABLE IF NOT EXISTS kiapi_file_pins (
    job_id text NOT NULL REFERENCES kiapi_jobs (id) ON DELETE CASCADE,
    file_id text NOT NULL,
    PRIMARY KEY (job_id, file_id)
);
CREATE INDEX IF NOT EXISTS kiapi_file_pins_file ON kiapi_file_pins (file_id);

-- Webhooks (pg/webhooks.py): subscriptions of jobs not yet reported ended, pending deliveries.
CREATE TABLE IF NOT EXISTS kiapi_webhook_subs (
    job_id text PRIMARY KEY,
    url text NOT NULL,
    events text[] NOT NULL,
    start_done boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS kiapi_webhook_deliveries (
    seq bigserial PRIMARY KEY,
    msg_id text NOT NULL UNIQUE,
    job_id text NOT NULL,
    url text NOT NULL,
    event text NOT NULL,
    body bytea NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_at double precision NOT NULL,
    last_error text
);
CREATE INDEX IF NOT EXISTS kiapi_webhook_deliveries_job ON kiapi_webhook_deliveries (job_id, seq);
"""
