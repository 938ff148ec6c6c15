"""Plumbing shared by the library: saving and loading adapters, files, reading torch files safely."""
