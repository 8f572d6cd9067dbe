"""Speed measurements of a config's models: images/s, peak memory, FLOPs and MFU (`tools/bench.py`)."""
