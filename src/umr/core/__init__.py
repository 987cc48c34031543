"""The leaf layer: value types and helpers every other layer uses; imports nothing else of umr.

* :mod:`.items` — :class:`~.items.Item`, :class:`~.items.Modality`, :class:`~.items.ItemError`:
  what is embedded, searched and reported.
* :mod:`.results` — typed outputs: embedding results, store hits, search results, index summaries.
* :mod:`.entries` — a corpus entry before it is loaded, and its :class:`~.entries.EntryKind`.
* :mod:`.fingerprint` — one hash of what determines a vector; file digests by stat signature.
* :mod:`.images` — safe image decoding (bombs, truncated files and non-images become item errors).
* :mod:`.video` — what a video file holds and its sampled frames (PyAV); unreadable videos become item errors.
* :mod:`.atomic` — files written whole or not at all (every writer of umr goes through it).
* :mod:`.devices` — device and dtype checks, and the CPU bfloat16 switch (``UMR_CPU_BF16``).
* :mod:`.multivector` — late interaction's token vectors, their storage encodings and exact MaxSim.
* :mod:`.uniir` — UniIR's text clean-up, shared by the M-BEIR reader and CLIP-SF.

Nothing is imported here, so that reading items never imports torch: import the module you need.
"""
