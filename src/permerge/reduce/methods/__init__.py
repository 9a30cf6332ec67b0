"""Built-in reduction methods, one per file; every module here is imported on first use."""
