"""Reduced precision: mixed FP16 and calibrated INT8 (explicit Q/DQ) variants of an artifact's graphs."""
