"""Arguments, where the URL and token come from, and turning failures into exit statuses."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from backend.client.account import command_quota, command_webhooks, parsers_add
from backend.client.api import ApiError, Endpoint, endpoint_from
from backend.client.commands import (
    EXIT_FAILED,
    EXIT_USAGE,
    command_cancel,
    command_delete,
    command_download,
    command_list,
    command_retry,
    command_status,
    command_upload,
)
from backend.client.display import print_api_error, print_error

DEFAULT_URL = "http://127.0.0.1:8000"
DEV_CREDENTIALS = Path("var") / "dev-credentials"
STATUSES = ("RECEIVING", "QUEUED", "UPLOADING", "COMPLETED", "FAILED", "CANCELLED")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_DESCRIPTION = "Upload files to the GraphQL upload service and manage your uploads."
_EPILOG = f"""\
The server is --url, else $UPLOAD_URL, else {DEFAULT_URL}.
The token is --token, else $UPLOAD_TOKEN, else (for a server on this machine only) the
development token in ./{DEV_CREDENTIALS} that `make run` writes, when that file exists.
--url, --token and --json may come before or after COMMAND.

exit status: 0 success (upload: every file ended COMPLETED), 1 failure, 2 usage error,
130 left with Ctrl-C. Server errors are printed on stderr as `CODE: message`.
"""


def parser_build() -> argparse.ArgumentParser:
    """The argument parser: COMMAND subparsers, with the common options accepted on both sides."""
    # SUPPRESS keeps an option given before COMMAND from being overwritten by the subparser's
    # default when it is not repeated after COMMAND.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"the service's base URL (default: $UPLOAD_URL or {DEFAULT_URL})"
    )
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $UPLOAD_TOKEN, see below)")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document for scripts"
    )

    parser = argparse.ArgumentParser(
        prog="python -m backend.client",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    upload = command("upload", "upload files, with a live progress bar per file")
    upload.add_argument("files", nargs="+", metavar="FILE")
    upload.add_argument(
        "--direct",
        action="store_true",
        help="put the parts straight into the bucket with presigned URLs (S3 servers with direct uploads)",
    )
    command("status", "show every field of one upload").add_argument("upload_id", metavar="ID")
    listing = command("list", "list your uploads, newest first")
    listing.add_argument("--status", choices=STATUSES, help="only uploads in this status")
    listing.add_argument("--limit", type=_positive_int, help="at most this many (default: all)")
    command("cancel", "cancel a RECEIVING, QUEUED or UPLOADING upload").add_argument("upload_id", metavar="ID")
    command("retry", "retry a FAILED or CANCELLED upload").add_argument("upload_id", metavar="ID")
    command("delete", "delete an upload: its stored object, staged bytes and record").add_argument(
        "upload_id", metavar="ID"
    )
    download = command("download", "download a COMPLETED upload and verify its sha256")
    download.add_argument("upload_id", metavar="ID")
    download.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to write ('-' for stdout; default: the upload's filename here, never overwritten)",
    )
    parsers_add(command, common=common)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _token_joined(argv: list[str]) -> list[str]:
    """`--token VALUE` as `--token=VALUE`: a URL-safe token may start with "-", which argparse
    would otherwise take for an option and refuse."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg == "--":
            joined.append(arg)
            joined.extend(values)
            break
        if arg == "--token":
            value = next(values, None)
            joined.append(arg if value is None else f"--token={value}")
        else:
            joined.append(arg)
    return joined


def endpoint_resolve(*, url: str | None, token: str | None, environ: dict[str, str], cwd: Path) -> Endpoint:
    """The endpoint from the options, else the environment, else the defaults.

    The development token is only offered to a server on this machine: it must not travel to a
    deployment the user pointed the client at.
    """
    url = url or environ.get("UPLOAD_URL") or DEFAULT_URL
    token = token or environ.get("UPLOAD_TOKEN")
    if not token and urlsplit(url).hostname in _LOOPBACK_HOSTS:
        token = _dev_token(cwd / DEV_CREDENTIALS)
    return endpoint_from(url=url, token=token)


def _dev_token(path: Path) -> str | None:
    try:
        credentials = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    token = credentials.get("token") if isinstance(credentials, dict) else None
    return token if isinstance(token, str) and token else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the process's exit status."""
    parser = parser_build()
    args = parser.parse_args(_token_joined(list(sys.argv[1:] if argv is None else argv)))
    as_json = bool(getattr(args, "json", False))
    try:
        endpoint = endpoint_resolve(
            url=getattr(args, "url", None), token=getattr(args, "token", None), environ=dict(os.environ), cwd=Path.cwd()
        )
    except ApiError as error:
        print_api_error(error)
        return EXIT_USAGE
    try:
        code = _command_run(parser=parser, args=args, endpoint=endpoint, as_json=as_json)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at exit
        return code
    except ApiError as error:
        print_api_error(error)
        if error.code == "UNAUTHENTICATED" and not endpoint.token:
            print_error("HINT", "no token: pass --token or set UPLOAD_TOKEN")
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly like other Unix tools, and point stdout at
        # /dev/null so the interpreter's own flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as error:  # a local file: unreadable, or a directory to write in that is missing
        print_error("FILE_ERROR", f"{error.filename or ''}: {error.strerror or error}".lstrip(": "))
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        print_error("INTERRUPTED", "stopped; uploads already accepted go on on the server (see `list`)")
        return 130


def _command_run(
    *, parser: argparse.ArgumentParser, args: argparse.Namespace, endpoint: Endpoint, as_json: bool
) -> int:
    match args.command:
        case "upload":
            return command_upload(endpoint=endpoint, files=args.files, as_json=as_json, direct=args.direct)
        case "status":
            return command_status(endpoint=endpoint, upload_id=args.upload_id, as_json=as_json)
        case "list":
            return command_list(endpoint=endpoint, status=args.status, limit=args.limit, as_json=as_json)
        case "cancel":
            return command_cancel(endpoint=endpoint, upload_id=args.upload_id, as_json=as_json)
        case "retry":
            return command_retry(endpoint=endpoint, upload_id=args.upload_id, as_json=as_json)
        case "delete":
            return command_delete(endpoint=endpoint, upload_id=args.upload_id, as_json=as_json)
        case "download":
            return command_download(endpoint=endpoint, upload_id=args.upload_id, output=args.output, as_json=as_json)
        case "quota":
            return command_quota(endpoint=endpoint, as_json=as_json)
        case "webhooks":
            return command_webhooks(endpoint=endpoint, args=args, as_json=as_json)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE
