"""`clipexport bench`: throughput and latency per tower x backend x precision x batch, with the
PyTorch eager model as the baseline in the same run."""
