-- Profile stage. Events name users by an external id (the event's user_id);
-- users.id is the UUID v5 of it, so the stream and the API agree on ids.
-- A user first seen through events has no email yet: email becomes optional
-- (still unique when present).
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
ALTER TABLE users ADD COLUMN external_id TEXT UNIQUE;
ALTER TABLE users ADD COLUMN account_status TEXT NOT NULL DEFAULT 'active'
  CHECK (account_status IN ('active', 'deleted'));
-- The full profile document (core, demographic, behavioral, transaction).
ALTER TABLE users ADD COLUMN profile JSONB;

-- Event ids already applied (deduplication window; old rows are pruned).
CREATE TABLE processed_events (
  event_id TEXT PRIMARY KEY,
  user_id UUID NOT NULL,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_processed_events_at ON processed_events(processed_at);

-- Consumed offsets stored in the same transaction as the state they produced.
CREATE TABLE stage_offsets (
  consumer_group TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INT NOT NULL,
  next_offset BIGINT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer_group, topic, partition)
);
