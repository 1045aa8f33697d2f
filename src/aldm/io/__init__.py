"""File input/output shared by every command: NIfTI, atomic writes, checksums."""
