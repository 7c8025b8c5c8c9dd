-- When each user's segments must be evaluated again without new events: the
-- earliest window edge of any segment (members leaving a "within" window,
-- non-members entering an "older_than" one). The profile stage sweeps due rows.
CREATE TABLE segment_rechecks (
  user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
  due_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_segment_rechecks_due ON segment_rechecks(due_at);
