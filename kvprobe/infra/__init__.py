"""Infrastructure every stage uses, on the lowest floor: one-line errors (`errors`), every file
read and written (`paths`: the bounded reader, output checks, locks, atomic writes), text made
safe for a terminal and a page (`display`), the memo folder of slow answers (`memo`), where a
number was measured (`provenance`: the host, the default model), TOML tables read into
dataclasses with every key checked (`toml_check`), the command line's parser class
(`parser`), SIGTERM taken as Ctrl-C (`signals`) and the one hook behind which the tests'
switches live (`test_hooks`). It imports nothing of kvprobe outside this package but
kvprobe's version."""
