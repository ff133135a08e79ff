-- Where each image's bytes are: NULL in blob_chunks (as before), else the URL of the object
-- store that holds it (file:///DIR, s3://BUCKET/PREFIX), where the object is named by sha256.
ALTER TABLE blobs ADD COLUMN store TEXT;

-- Objects the collector deleted: an upload that stored the same image just before (and whose
-- object the delete may have removed) finds its tombstone in its own transaction and stores
-- the object again. Kept for a day.
CREATE TABLE blob_tombstones (
    sha256  TEXT NOT NULL,
    store   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (sha256, store)
);
CREATE INDEX blobs_store ON blobs (store) WHERE store IS NOT NULL;
