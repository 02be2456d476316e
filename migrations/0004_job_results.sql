-- What a finished job produced (the `result` of its ferry/1 Job message): for clone and import
-- every table verified, with its row count and checksum. Written in the transaction that
-- records the job SUCCEEDED; NULL for any other job.
ALTER TABLE jobs ADD COLUMN result jsonb;
