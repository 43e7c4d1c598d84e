"""Images in, what a run reads: packs and the embedded set, their visiting order, loading and augmentation
(the pack's format, pack_format.py, is shared with packs/, which writes packs and is never imported here)."""
