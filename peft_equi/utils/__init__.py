"""Plumbing shared by the library: files, reading torch files safely, dtypes, optional dependencies."""
