"""Writes: uploads, who may write, signed URLs, purges and the next tier's peers."""
