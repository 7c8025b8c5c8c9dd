-- Cheaper profile writes (the profile stage rewrites the row of every user a
-- batch touches; it was the costliest statement of the pipeline, about 80 µs
-- per row, measured with pg_stat_statements under lifecycle-bench):
-- - the document is stored as json text, not jsonb: nothing queries inside it
--   with jsonb operators, and a jsonb value is parsed into its binary form on
--   every write (inserting 20,000 documents of 1.3 KB: 808 ms as jsonb,
--   370 ms as json);
-- - lz4 compresses the larger documents several times faster than pglz;
-- - free room on each page lets updates that change no indexed column be HOT
--   (no index is written), where every update wrote all six indexes of users.
ALTER TABLE users ALTER COLUMN profile TYPE json USING profile::json;
ALTER TABLE users ALTER COLUMN profile SET COMPRESSION lz4;
ALTER TABLE users SET (fillfactor = 70);
