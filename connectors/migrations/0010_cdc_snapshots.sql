-- The CDC connector's record of each replication slot whose initial snapshot
-- finished: a slot without a row here was created by a run that stopped
-- mid-snapshot, so the next run drops it and snapshots again.
CREATE TABLE cdc_snapshots (
  slot TEXT NOT NULL,
  source TEXT NOT NULL,            -- host:port/database of the captured server
  consistent_point TEXT NOT NULL,  -- the slot's first LSN, X/X
  rows BIGINT NOT NULL,
  completed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (slot, source)
);
