-- Workflow engine, segments and triggers (issue 5).

-- Workflows are versioned: one row per version of a named workflow. An
-- instance references the exact version it runs, so editing a workflow never
-- changes running instances.
ALTER TABLE workflows ADD COLUMN version_number INT NOT NULL DEFAULT 1;
-- Rows written before versioning: number each name's rows by creation time.
UPDATE workflows w SET version_number = v.n
FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n FROM workflows) v
WHERE w.id = v.id;
ALTER TABLE workflows ADD COLUMN max_retries INT NOT NULL DEFAULT 3;
ALTER TABLE workflows ADD CONSTRAINT workflows_name_version UNIQUE (name, version_number);

-- Instances: the seed columns plus the engine's durable state.
ALTER TABLE workflow_executions DROP CONSTRAINT valid_execution_status;
ALTER TABLE workflow_executions ADD CONSTRAINT valid_execution_status
  CHECK (status IN ('pending', 'running', 'paused', 'completed', 'failed', 'cancelled'));
-- The serialised instance (tokens, results, retries, history); NULL until started.
ALTER TABLE workflow_executions ADD COLUMN state JSONB;
ALTER TABLE workflow_executions ADD COLUMN error_type TEXT;
ALTER TABLE workflow_executions ADD COLUMN failed_step TEXT;
ALTER TABLE workflow_executions ADD COLUMN stack_trace TEXT;
ALTER TABLE workflow_executions ADD COLUMN retry_count INT NOT NULL DEFAULT 0;
ALTER TABLE workflow_executions ADD COLUMN callback_url TEXT;
ALTER TABLE workflow_executions ADD COLUMN trigger_id UUID REFERENCES triggers(id) ON DELETE SET NULL;
ALTER TABLE workflow_executions ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- When the engine should look at the instance next (start, timer, retry).
ALTER TABLE workflow_executions ADD COLUMN wake_at TIMESTAMPTZ;
-- Which engine works on it, until when (a crashed engine's lease expires;
-- a restarted engine with the same node id takes its own leases back at once).
ALTER TABLE workflow_executions ADD COLUMN lease_owner TEXT;
ALTER TABLE workflow_executions ADD COLUMN lease_until TIMESTAMPTZ;
CREATE INDEX idx_executions_due ON workflow_executions(wake_at)
  WHERE status IN ('pending', 'running') AND wake_at IS NOT NULL;

-- Every retry, with its time (the seed spec's "retry attempts are tracked with timestamps").
CREATE TABLE workflow_execution_attempts (
  id BIGSERIAL PRIMARY KEY,
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  step TEXT NOT NULL,
  attempt INT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
  error_message TEXT,
  idempotency_key TEXT NOT NULL,
  duration_ms INT NOT NULL,
  at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_attempts_execution ON workflow_execution_attempts(execution_id, at);

-- Segments can be switched off without deleting their memberships.
ALTER TABLE user_segments ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT true;

-- Trigger evaluations name the event that caused them.
ALTER TABLE trigger_executions ADD COLUMN event_id TEXT;

-- Webhook subscriptions: signed (HMAC-SHA256) deliveries of workflow and
-- segment events, retried with backoff from an outbox. Instance callbacks
-- (callback_url of an execute request) go through the same outbox with no
-- subscription.
CREATE TABLE webhook_subscriptions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  url TEXT NOT NULL,
  secret TEXT NOT NULL,
  event_types TEXT[] NOT NULL,
  enabled BOOLEAN NOT NULL DEFAULT true,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  subscription_id UUID REFERENCES webhook_subscriptions(id) ON DELETE CASCADE,
  url TEXT NOT NULL,
  event_type TEXT NOT NULL,
  event_id UUID NOT NULL,
  payload JSONB NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_error TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  delivered_at TIMESTAMPTZ
);
CREATE INDEX idx_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
