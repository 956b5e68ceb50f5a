"""Infrastructure every stage uses, on the lowest floor: one-line errors (`errors`), every file
read and written (`paths`: the bounded reader, output checks, locks, atomic writes), text made
safe for a terminal and a page (`display`), the memo folder of slow answers (`memo`) and where a
number was measured (`provenance`: the host, the default model). It imports nothing of kvprobe
outside this package."""
