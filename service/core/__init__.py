"""The pure core: the CONTRACT section 4 rules as plain Python, with no I/O."""
