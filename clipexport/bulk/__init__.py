"""Bulk embedding: an input list (folders, lists, tables, tar shards, texts) to a sharded,
resumable Parquet dataset, on the pipelined local engine or on Ray Data. Torch-free."""
