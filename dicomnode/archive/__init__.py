"""The archive: files in the store, rows in the index, and the one ingest path between them."""
