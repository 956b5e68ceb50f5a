from kvprobe.cli import entry

entry()
