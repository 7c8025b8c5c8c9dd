-- API keys expire and rotate; every instance of the API admits a request
-- through one statement on api_rate_limits, so revocation, expiry and the
-- per-key rate limit hold for the whole deployment.
ALTER TABLE api_keys
  ADD COLUMN expires_at TIMESTAMPTZ,
  ADD COLUMN replaced_by UUID REFERENCES api_keys(id);

-- The accepted requests of each key within the last window (a sliding-window
-- log, oldest first, at most the limit); the last one is the key's last use.
CREATE TABLE api_rate_limits (
  key_id UUID PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
  hits TIMESTAMPTZ[] NOT NULL
);
