"""Which engine a run measures through: llama.cpp in this process (the default), or a
llama-server (`--llama-server PATH`: spawned per cache type; `--server URL`: already running).
Checked before anything is hashed or loaded; the argparse namespace ends here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kvprobe.api.cache_types import CacheConfig, parse_config_id
from kvprobe.api.engine import EngineOptions
from kvprobe.engine import DEFAULT_ENGINE, get_engine
from kvprobe.infra.errors import UserError

SERVER_ENGINE = "llama-server"


def wants_server(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "llama_server", None) or getattr(args, "server", None))


def engine_choice(args: argparse.Namespace, out_path: Path) -> tuple[str, EngineOptions]:
    """The engine's registry name and its options; one line where they do not fit together."""
    if not wants_server(args):
        if getattr(args, "reference", None):
            raise UserError(
                "--reference in-process checks a llama-server against kvprobe's own llama.cpp: give "
                "--llama-server PATH or --server URL too"
            )
        for flag in ("server_cache", "reference_server"):
            if getattr(args, flag, None):
                raise UserError(f"--{flag.replace('_', '-')} goes with --server URL")
        if getattr(args, "server_arg", None):
            raise UserError("--server-arg goes with --llama-server PATH")
        return DEFAULT_ENGINE, EngineOptions()
    if args.llama_server and args.server:
        raise UserError(
            "give --llama-server PATH (kvprobe starts it) or --server URL (already running), not both"
        )
    log_dir = out_path.parent / f"{out_path.stem}.server-logs"
    if args.llama_server:
        if args.server_cache or args.reference_server:
            raise UserError(
                "--server-cache and --reference-server go with --server URL, not --llama-server PATH"
            )
        binary = Path(args.llama_server).expanduser()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise UserError(
                f"--llama-server {binary}: not an executable file; give the path of your llama-server "
                "binary (llama.cpp's build/bin/llama-server)"
            )
        template = getattr(args, "chat_template", None)  # the servers render it too (--jinja)
        options = EngineOptions(
            binary=binary.resolve(),
            server_args=tuple(args.server_arg),
            chat_template=Path(template).expanduser().resolve() if template else None,
            log_dir=log_dir,
        )
    else:
        if args.server_arg:
            raise UserError("--server-arg goes with --llama-server PATH; a running --server keeps its own")
        if getattr(args, "chat_template", None):
            raise UserError(
                "--chat-template goes with --llama-server PATH: the running --server renders with its own "
                "template; drop --chat-template, or start servers with --llama-server PATH"
            )
        if not args.server_cache:
            raise UserError(
                "--server needs --server-cache TYPE: the cache types that server was started with"
            )
        if not args.reference_server:
            raise UserError(
                "--server needs --reference-server URL: an f16 llama-server of the same model"
                + (
                    " (--reference in-process checks that server against kvprobe's own f16; the cache is "
                    "compared server against server, so that a build difference is never blamed on it)"
                    if getattr(args, "reference", None)
                    else ""
                )
            )
        if getattr(args, "null_check", False):
            raise UserError(
                "--null-check needs a second f16 context, and an attached f16 server has one slot: drop "
                "--null-check, or let kvprobe start the servers with --llama-server PATH"
            )
        if args.server.rstrip("/") == args.reference_server.rstrip("/"):
            raise UserError(
                "--server and --reference-server are the same server: give the f16 one as the reference"
            )
        options = EngineOptions(
            url=args.server, url_cache=args.server_cache, reference_url=args.reference_server,
            log_dir=log_dir,
        )  # fmt: skip
    get_engine(SERVER_ENGINE).configured(options)  # refuses what does not fit, in one line
    return SERVER_ENGINE, options


def _config_id(text: str) -> str | None:
    """The configuration a --cache value names (None where it names none: refused as a mismatch)."""
    try:
        return parse_config_id(text).id
    except ValueError:
        return None


def attach_configs(args: argparse.Namespace) -> None:
    """With --server, the configurations are what the servers run: --cache defaults to the
    stated --server-cache and may not name another (kvprobe cannot change a running server)."""
    if not getattr(args, "server", None) or not args.server_cache:
        return
    try:
        stated: CacheConfig = parse_config_id(args.server_cache)
    except ValueError:
        raise UserError(
            f"--server-cache {args.server_cache}: give f16, q8_0, q4_0 ... or k=TYPE,v=TYPE"
        ) from None
    asked = [*args.cache, *([f"k={args.cache_k},v={args.cache_v}"] if args.cache_k else [])]
    if any(_config_id(a) != stated.id for a in asked) or getattr(args, "split_kv", False):
        raise UserError(
            f"--server runs {stated.id} (--server-cache): measure only that, or start servers with "
            "--llama-server PATH to measure other cache types"
        )
    if stated.type_k == stated.type_v:
        args.cache, args.cache_k, args.cache_v = [stated.type_k], None, None
    else:
        args.cache, args.cache_k, args.cache_v = [], stated.type_k, stated.type_v
