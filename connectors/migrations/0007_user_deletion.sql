-- Deleting a user deletes what is about them. The seed schema declared these
-- references without ON DELETE, so `DELETE FROM users` failed with a foreign
-- key violation for any user with workflow executions, trigger executions or
-- lifecycle audit rows. Rows that only mention an execution keep existing
-- when that execution goes (the reference becomes NULL).
ALTER TABLE workflow_executions DROP CONSTRAINT workflow_executions_user_id_fkey,
  ADD CONSTRAINT workflow_executions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE trigger_executions DROP CONSTRAINT trigger_executions_user_id_fkey,
  ADD CONSTRAINT trigger_executions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE trigger_executions DROP CONSTRAINT trigger_executions_workflow_execution_id_fkey,
  ADD CONSTRAINT trigger_executions_workflow_execution_id_fkey FOREIGN KEY (workflow_execution_id)
    REFERENCES workflow_executions(id) ON DELETE SET NULL;
ALTER TABLE lifecycle_events DROP CONSTRAINT lifecycle_events_user_id_fkey,
  ADD CONSTRAINT lifecycle_events_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE lifecycle_events DROP CONSTRAINT lifecycle_events_workflow_execution_id_fkey,
  ADD CONSTRAINT lifecycle_events_workflow_execution_id_fkey FOREIGN KEY (workflow_execution_id)
    REFERENCES workflow_executions(id) ON DELETE SET NULL;
