"""Parity between a reference and a candidate: statistics, gates per precision, the report. numpy only."""
