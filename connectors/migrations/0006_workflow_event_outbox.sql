-- workflow.events and workflow.dlq records, written in the same transaction as
-- the instance change they report and relayed to Kafka by the engine (then
-- deleted): no event is lost to a crash, and none is sent for a change that
-- was not committed.
CREATE TABLE workflow_event_outbox (
  id BIGSERIAL PRIMARY KEY,
  topic TEXT NOT NULL,
  key BYTEA,
  payload BYTEA NOT NULL,
  header_name TEXT,
  header_value BYTEA,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
