"""paperbus control CLI.

    python scripts/ctl.py [--run-dir DIR] [--json] [--wide] [--timeout S] [--key FILE] COMMAND [ARG ...]

The commands, their arguments and their help come from the supervisor's
command table (actors/supervision/control.py); `ctl.py --help` lists them.
resume never lifts a halt (it is refused while halted): unhalt does, and
trading then stays paused until resume. restart of a disabled (failed) actor
re-enables it. send reaches any command an actor's class declares
(`send ACTOR` lists them). status wraps each actor's info below its row to the
terminal width; --wide keeps it on the row, whole. runs and keygen need no
supervisor. --key: a client secret certificate to use over tcp instead
of the one the supervisor's config names.
Exit codes: 0 ok, 1 failure (error reply, timeout, no supervisor), 2 usage.
Every request is answered within --timeout (default 2 s) or reported as a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import zmq  # noqa: E402

from actors.supervision.control import CONTROL, check_args, parse_kv  # noqa: E402
from actors.supervision.runfiles import lock_holder  # noqa: E402
from bus.codec import ProtocolError, Stamper  # noqa: E402
from bus.messages import CtlReply, CtlRequest  # noqa: E402
from bus.security import SecurityError, keygen  # noqa: E402
from bus.sockets import EndpointError, Endpoints, open_port  # noqa: E402

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def commands_help() -> str:
    """The command table as --help shows it: usage, then the help text wrapped below it."""
    cols = min(shutil.get_terminal_size((100, 24)).columns, 100)
    lines = ["commands:"]
    for c in CONTROL.values():
        lines.append(f"  {c.name} {c.usage}".rstrip())
        lines += textwrap.wrap(c.help, cols, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _remote_copy(run_dir: str) -> bool:
    """A directory holding only a copy of a remote supervisor's endpoints.json
    (no lock file ever, control on tcp): there is no local lock to ask."""
    if os.path.exists(os.path.join(run_dir, "supervisor.lock")):
        return False
    try:
        with open(os.path.join(run_dir, "endpoints.json"), "rb") as f:
            return str(json.load(f).get("control", "")).startswith("tcp://")
    except (OSError, ValueError, AttributeError):
        return False


def request(run_dir: str, cmd: str, arg: str = "", timeout: float = 2.0, key: str | None = None,
            command: str = "", args: dict | None = None) -> CtlReply:
    """Send one control request; raises RuntimeError with a clear message on failure.

    ``key``: client secret certificate for a tcp control endpoint (default: the
    one recorded in endpoints.json)."""
    if not os.path.isdir(run_dir):
        raise RuntimeError(f"no run directory {run_dir} (is the supervisor running?)")
    if lock_holder(run_dir) is None and not _remote_copy(run_dir):
        raise RuntimeError(f"no supervisor running in {run_dir}")
    try:
        endpoints = Endpoints.from_run_dir(run_dir, client_key=key)
    except SecurityError as e:
        raise RuntimeError(str(e)) from None
    except (OSError, ValueError) as e:
        raise RuntimeError(f"supervisor in {run_dir} has not published its endpoints yet ({e})") from None
    ctx = zmq.Context()
    try:
        port = open_port(ctx, endpoints, "control", bind=False, stamper=Stamper("ctl", run=""))
    except EndpointError as e:
        ctx.term()
        raise RuntimeError(str(e)) from None
    try:
        rid = uuid.uuid4().hex[:12]
        port.send(CtlRequest(id=rid, cmd=cmd, arg=arg, command=command, args=args or {}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not port.sock.poll(int(left * 1000) + 1):
                raise RuntimeError(f"no reply from the supervisor within {timeout:g}s")
            try:
                msg = port.recv().msg
            except ProtocolError as e:
                raise RuntimeError(f"bad reply from the supervisor: {e}") from None
            if isinstance(msg, CtlReply) and msg.id in (rid, ""):
                return msg
    finally:
        port.close()
        ctx.term()


def trading_line(data: dict) -> str | None:
    """The trading state as the exchange reports it (the authority), and the strategy's."""
    actors = data.get("actors", {})
    ex = (actors.get("paper-exchange") or {}).get("status") or {}
    strat = actors.get("strategy") or {}
    parts = []
    if ex.get("halted"):
        parts.append("HALTED (kill switch; `ctl unhalt` lifts it)")
    if ex.get("flattening"):
        parts.append("FLATTENING")
    if ex.get("paused"):
        parts.append("PAUSED (`ctl resume`)")
    if strat.get("state") == "failed":
        parts.append("strategy FAILED (`ctl restart strategy`)")
    if not parts:
        if "halted" not in ex:
            return None  # no exchange here (placement, or it has not reported yet)
        parts.append("active" if strat.get("state") == "running" else f"strategy {strat.get('state', 'absent')}")
    return "trading  " + "; ".join(parts)


def render_status(data: dict, width: int | None = None) -> str:
    """``width``: wrap to it, each actor's info and detail on indented lines below
    its row; None (--wide): everything on the row, nothing cut."""
    head = (f"run_id {data.get('run_id')}  supervisor pid {data.get('pid')}  phase {data.get('phase')}  "
            f"up {data.get('uptime_s')}s  since {data.get('since')}")
    lines = textwrap.wrap(head, width, subsequent_indent="  ") if width else [head]
    trading = trading_line(data)
    if trading:
        lines += textwrap.wrap(trading, width, subsequent_indent="         ") if width else [trading]
    lines.append(f"{'ACTOR':16} {'STATE':10} {'PID':>7} {'UPTIME':>9} {'RESTARTS':>8} {'HB AGE':>7}"
                 + ("" if width else "  INFO"))
    for name, a in data.get("actors", {}).items():
        up = f"{a['uptime_s']:.1f}s" if a.get("uptime_s") is not None else "-"
        hb = f"{a['heartbeat_age_s']:.2f}s" if a.get("heartbeat_age_s") is not None else "-"
        info = ", ".join(f"{k}={v}" for k, v in {**a.get("info", {}), **a.get("status", {})}.items())
        row = f"{name:16} {a['state']:10} {a.get('pid') or '-':>7} {up:>9} {a['restarts']:>8} {hb:>7}"
        detail = a.get("detail", "")
        if not width:
            lines.append(f"{row}  {detail + '; ' if detail else ''}{info}".rstrip())
            continue
        lines.append(row)
        for text in (detail, info):
            if text:
                lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    ")
    pl = data.get("placement")
    if pl:  # actors another supervisor runs, as that supervisor last reported them
        for name, r in pl.get("remote", {}).items():
            lines.append(f"{name:16} {r['state']:10} {'(group ' + r['group'] + ')':>36}")
    return "\n".join(lines)


def render_runs(runs: list[dict]) -> str:
    """The run history as a table; what nobody recorded shows as "-", never as 0."""
    def cell(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"{'RUN_ID':22} {'PREVIOUS':22} {'MODE':8} {'START':19} {'END':19} {'EXIT':>4} {'FILLS':>6} "
             f"{'FINAL EQUITY':>16}"]
    for r in runs:
        start = (r.get("start") or "-")[:19]
        end = (r.get("end") or ("running" if r.get("running") else "-"))[:19]
        lines.append(f"{r['run_id']:22} {cell(r.get('previous_run_id')):22} {cell(r.get('mode')):8} {start:19} "
                     f"{end:19} {cell(r.get('exit_code')):>4} {cell(r.get('fills')):>6} "
                     f"{cell(r.get('final_equity'), '{:,.2f}'):>16}")
    return "\n".join(lines)


def _runs(run_dir: str, as_json: bool) -> int:
    from actors.rundir import list_runs, read_json

    if not os.path.isdir(run_dir):
        print(f"ctl: no run directory {run_dir}", file=sys.stderr)
        return EXIT_FAIL
    runs = list_runs(run_dir)
    for r in runs:  # a run with no end: running now (its supervisor holds the lock), or killed
        if r["end"] is None:
            r["running"] = (lock_holder(r["dir"]) is not None
                            and read_json(os.path.join(r["dir"], "run.json")).get("run_id") == r["run_id"])
    if as_json:
        print(json.dumps(runs))
    elif not runs:
        print(f"no runs in {run_dir}")
    else:
        print(render_runs(runs))
    return EXIT_OK


def render_reply(cmd: str, data: dict) -> str:
    """A fanned-out command's outcome, one line per actor: its message if it gave one."""
    actors = data.get("actors")
    if not isinstance(actors, dict):
        return f"{cmd}: ok {json.dumps(data) if data else ''}".rstrip()
    lines = [f"{cmd}: ok"]
    for actor, r in actors.items():
        d = r.get("data") or {}
        text = r.get("skipped") or d.get("message") or ", ".join(f"{k}={v}" for k, v in d.items()) or "ok"
        lines.append(f"  {actor}: {text}")
    return "\n".join(lines)


def _keygen(directory: str, force: bool) -> int:
    try:
        made = keygen(directory, force=force)
    except FileExistsError as e:
        print(f"ctl: keygen: {e}", file=sys.stderr)
        return EXIT_FAIL
    except (NotADirectoryError, OSError) as e:
        print(f"ctl: keygen: cannot make keys in {os.path.abspath(directory)}: {e}", file=sys.stderr)
        return EXIT_USAGE
    d, server, client, allowed = (os.path.dirname(made["server"]), made["server"], made["client_secret"],
                                  made["allowed"])
    print(f"CurveZMQ keys in {d} (directory 0700):\n"
          "  server.key          server public certificate: every client needs it\n"
          "  server.key_secret   server secret (0600): only where endpoints are bound\n"
          "  client.key          client public certificate\n"
          "  client.key_secret   client secret (0600): used to connect\n"
          "  allowed/client.key  the allowed clients; put another client's .key here to let it in\n"
          "Config ([bus] section, or --set bus.KEY=VALUE):\n"
          '  transport = "tcp"\n'
          f'  curve_server_key = "{server}"\n'
          f'  curve_client_key = "{client}"\n'
          f'  curve_allowed_clients = "{allowed}"')
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ctl.py", description="paperbus control CLI", epilog=commands_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="run", help="run directory of the supervisor (default ./run)")
    ap.add_argument("--json", action="store_true", help="print the reply as JSON")
    ap.add_argument("--wide", action="store_true", help="status: each actor on one line, info not wrapped")
    ap.add_argument("--timeout", type=float, default=2.0, help="reply timeout in seconds (default 2)")
    ap.add_argument("--key", default=None, metavar="FILE",
                    help="tcp: client secret certificate (.key_secret) to connect with")
    ap.add_argument("--force", action="store_true", help="keygen: replace existing keys")
    ap.add_argument("command", choices=list(CONTROL), help="one of the commands below")
    ap.add_argument("args", nargs="*", metavar="ARG", help="its arguments, as listed below")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    wrong = check_args(CONTROL[args.command], args.args)
    if wrong:
        print(f"ctl: {wrong}" + ("; the run directory is --run-dir DIR" if args.command == "runs" else ""),
              file=sys.stderr)
        return EXIT_USAGE
    if args.command == "keygen":
        return _keygen(args.args[0] if args.args else "keys", args.force)
    if args.command == "runs":
        return _runs(os.path.abspath(args.run_dir), args.json)
    if args.force:
        print("ctl: --force is only for keygen", file=sys.stderr)
        return EXIT_USAGE
    if args.wide and args.command != "status":
        print("ctl: --wide is only for status", file=sys.stderr)
        return EXIT_USAGE
    arg, command, kv = (args.args + ["", ""])[0], (args.args + ["", ""])[1], {}
    if args.command == "send":
        try:
            kv = parse_kv(args.args[2:])
        except ValueError as e:
            print(f"ctl: send: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        rep = request(os.path.abspath(args.run_dir), args.command, arg, args.timeout, key=args.key,
                      command=command if args.command == "send" else "", args=kv)
    except RuntimeError as e:
        print(f"ctl: {e}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"ok": rep.ok, "error": rep.error, "data": rep.data}))
    elif not rep.ok:
        print(f"ctl: {args.command} failed: {rep.error}", file=sys.stderr)
    elif args.command == "status":
        print(render_status(rep.data, None if args.wide else shutil.get_terminal_size((80, 24)).columns))
    elif "message" in rep.data:
        print(f"{args.command}: ok: {rep.data['message']}")
    else:
        print(render_reply(args.command, rep.data))
    return EXIT_OK if rep.ok else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
