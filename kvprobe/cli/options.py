"""What the commands' parser sections share, in one place for the command modules: the parser
class that ends in one line and the root parser (kvprobe.infra.parser), and the option types
and options more than one command takes (kvprobe.run.options: `kvprobe run` owns them, and a
sweep reads its cells' words with them)."""

from kvprobe.infra.parser import Parser, Subparsers, root_parser
from kvprobe.run.options import MAX_CTX, MIN_CTX, ctx_tokens, duration, margin_option

__all__ = [
    "MAX_CTX",
    "MIN_CTX",
    "Parser",
    "Subparsers",
    "ctx_tokens",
    "duration",
    "margin_option",
    "root_parser",
]
