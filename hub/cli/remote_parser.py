"""The parser of the commands that act on a running hub through its API (remote.py says
how they find it): devices, models, roll-outs, tasks, policy, audit."""

from __future__ import annotations

import argparse
import math

from hub.cli.lazy import command
from outpost import datafolders


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the API commands to the top-level parser's subcommands."""
    _devices(sub)
    _models(sub)
    _rollouts(sub)
    _tasks(sub)
    _policy(sub)
    _sinks(sub)
    p = sub.add_parser("audit", help="the audit log, newest first (admin)")
    add_arguments(p)
    p.add_argument("--limit", type=_page, default=50, help="entries to show (default 50)")
    p.set_defaults(func=command("hub.cli.audit:show_audit"))


def _action(
    group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    p = group.add_parser(name, help=help, description=help)
    add_arguments(p)
    return p


def _devices(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "devices",
        help="the fleet: list, show, label and rename devices",
        description="Without an action: the registry as a table, read from --data's "
        "database (the hub need not run) or from --hub's API.",
    )
    add_arguments(p)
    p.set_defaults(func=command("hub.cli.devices:list_devices"))
    group = p.add_subparsers(metavar="ACTION")
    d = _action(group, "list", "the registry as a table (the default action)")
    d.set_defaults(func=command("hub.cli.devices:list_devices"))
    d = _action(group, "show", "one device: state, load, models, store and latest events")
    d.add_argument("device", type=_ref, metavar="DEVICE", help="its name or id")
    d.add_argument("--events", type=_page, default=10, help="latest events to show (default 10)")
    d.set_defaults(func=command("hub.cli.devices:show_device"))
    d = _action(group, "label", "set labels (KEY=VALUE) or remove them (KEY-)")
    d.add_argument("device", type=_ref, metavar="DEVICE", help="its name or id")
    d.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")
    d.set_defaults(func=command("hub.cli.devices:label_device"))
    d = _action(group, "rename", "give a device a new name (unique in the fleet)")
    d.add_argument("device", type=_ref, metavar="DEVICE", help="its name or id")
    d.add_argument("name", metavar="NAME", help="the new name")
    d.set_defaults(func=command("hub.cli.devices:rename_device"))


def _models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="upload model bundles and list them")
    group = p.add_subparsers(required=True, metavar="ACTION")
    m = _action(group, "upload", "upload a bundle folder (model.tflite, model.json, sample.json)")
    m.add_argument(
        "folder",
        type=datafolders.path("a model bundle folder"),
        metavar="DIR",
        help="e.g. models/vibration-anomaly/1.0.0",
    )
    m.set_defaults(func=command("hub.cli.models:upload_model"))
    m = _action(group, "list", "the uploaded models")
    m.set_defaults(func=command("hub.cli.models:list_models"))


def _rollouts(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rollouts", help="start, follow, halt and list staged roll-outs")
    group = p.add_subparsers(required=True, metavar="ACTION")
    r = _action(
        group,
        "start",
        "roll a model version (or, with --agent, an agent release) out: canaries first, "
        "then the rest",
    )
    r.add_argument("model", metavar="MODEL", nargs="?")
    r.add_argument("version", metavar="VERSION", nargs="?")
    r.add_argument(
        "--agent",
        metavar="VERSION",
        help="roll out this agent release (outpost-hub agent-releases upload) instead of a model",
    )
    r.add_argument(
        "--shadow",
        action="store_true",
        help="first run it beside the live version on sampled inputs, never serving; "
        "promoted to a staged roll-out if it meets the criteria below, else stopped",
    )
    r.add_argument("--agreement-min", type=_fraction, metavar="SHARE", help="with --shadow (0.97)")
    r.add_argument("--latency-ratio-max", type=_ratio, metavar="X", help="with --shadow (1.2)")
    r.add_argument("--min-samples", type=int, metavar="N", help="with --shadow (500)")
    r.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only devices with this label (repeatable; default: every device)",
    )
    r.add_argument(
        "--canary",
        type=parse_share,
        metavar="SHARE",
        help="share of the devices that get it first, e.g. 10%% (default: the hub's)",
    )
    r.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="return at once instead of following its progress",
    )
    r.set_defaults(func=command("hub.cli.models:start_rollout"))
    r = _action(group, "show", "a roll-out's progress, live until it ends (Ctrl-C leaves it)")
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--no-follow", dest="follow", action="store_false", help="print it once")
    r.set_defaults(func=command("hub.cli.models:show_rollout"))
    r = _action(group, "halt", "halt a roll-out: devices that got it go back")
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--reason", default="", help="why, for the record")
    r.set_defaults(func=command("hub.cli.models:halt_rollout"))
    r = _action(group, "list", "roll-outs, newest first")
    r.set_defaults(func=command("hub.cli.models:list_rollouts"))


def _tasks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tasks", help="submit, list, show and cancel inference tasks")
    group = p.add_subparsers(required=True, metavar="ACTION")
    t = _action(
        group,
        "submit",
        'submit a task (or {"tasks": [...]}) from a JSON file or stdin (-), or one built '
        "from --model and --input (or --input-file)",
    )
    t.add_argument("file", nargs="?", metavar="FILE", help="JSON as POST /api/v1/tasks takes")
    t.add_argument("--model", help="the model to run (instead of a file)")
    t.add_argument("--input", metavar="JSON", help="the model input, e.g. '[[0.1, 0.2]]'")
    t.add_argument(
        "--input-file",
        metavar="PATH",
        help="the model input as a file of the tensor's bytes in C order (float32 "
        "little-endian, or int8 with --dtype int8), instead of --input",
    )
    t.add_argument(
        "--dtype",
        choices=("float32", "int8"),
        help="float32: real values, quantized on the device (the default); int8: quantized",
    )
    t.add_argument("--device", type=_ref, help="run it on this device (name or id) only")
    t.add_argument(
        "--wait-for-model",
        action="store_true",
        help="queue it even if no device has the model yet",
    )
    t.add_argument("--wait", action="store_true", help="wait for the result and print it")
    t.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds --wait waits (default 60)"
    )
    t.set_defaults(func=command("hub.cli.tasks:submit"))
    t = _action(group, "list", "tasks, newest first, with why queued ones wait")
    t.add_argument(
        "--state", help="queued, assigned, running, succeeded, failed, ... (a,b for several)"
    )
    t.add_argument("--device", type=_ref, help="only tasks of this device (name or id)")
    t.add_argument("--model", help="only tasks for this model")
    t.add_argument("--limit", type=_page, default=50, help="tasks to show (default 50)")
    t.set_defaults(func=command("hub.cli.tasks:list_tasks"))
    t = _action(group, "show", "one task: state, why it waits, result, every event")
    t.add_argument("id", type=_ref, metavar="TASK")
    t.set_defaults(func=command("hub.cli.tasks:show_task"))
    t = _action(group, "cancel", "cancel a task that has not ended")
    t.add_argument("id", type=_ref, metavar="TASK")
    t.set_defaults(func=command("hub.cli.tasks:cancel_task"))


def _policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="show, set and delete policy layers")
    group = p.add_subparsers(required=True, metavar="ACTION")
    s = _action(group, "show", "the layers, one layer, or what a device runs (--device)")
    s.add_argument("layer", nargs="?", type=_ref, metavar="LAYER")
    s.add_argument("--device", type=_ref, help="a device's effective policy (name or id)")
    s.set_defaults(func=command("hub.cli.policy:show_policy"))
    s = _action(group, "set", "write a layer from a JSON file of policy fields")
    s.add_argument(
        "layer", type=_ref, metavar="LAYER", help="its name; `fleet` applies to every device"
    )
    s.add_argument("file", metavar="FILE", help="JSON object of the fields it sets")
    s.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a group layer: devices with these labels",
    )
    s.add_argument("--rank", type=int, default=0, help="a group layer's merge order")
    s.add_argument("--device", type=_ref, help="a device override: its name or id")
    s.set_defaults(func=command("hub.cli.policy:set_policy"))
    s = _action(group, "delete", "delete a layer")
    s.add_argument("layer", type=_ref, metavar="LAYER")
    s.set_defaults(func=command("hub.cli.policy:delete_policy"))


def _sinks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sinks", help="the event sinks: state, dead letters, replay")
    group = p.add_subparsers(required=True, metavar="ACTION")
    s = _action(group, "list", "each sink's state, lag and counts")
    s.set_defaults(func=command("hub.cli.sinks:list_sinks"))
    s = _action(group, "dead-letters", "events a sink refused for good, newest first")
    s.add_argument("sink", type=_ref, metavar="SINK")
    s.add_argument("--limit", type=_page, default=50, help="how many (default 50)")
    s.set_defaults(func=command("hub.cli.sinks:dead_letters"))
    s = _action(group, "replay", "deliver a sink's kept events again from a time on")
    s.add_argument("sink", type=_ref, metavar="SINK")
    s.add_argument(
        "--from",
        dest="from_time",
        required=True,
        type=_when,
        metavar="TIME",
        help="2026-12-04T10:00 (local unless it names a zone), or an age such as 2h",
    )
    s.set_defaults(func=command("hub.cli.sinks:replay"))


def _ref(text: str) -> str:
    """A name or id as given, refused when empty (argparse names the argument): in the
    URL it would leave its path segment empty, and the hub answer "Not Found", or for a
    --device filter, be taken for none given."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give its name or id")
    return text


def _when(text: str) -> float:
    from hub.cli.sinks import parse_time  # light: no hub code

    return parse_time(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every remote command takes (remote.py reads them)."""
    where = p.add_argument_group("which hub (or set OUTPOST_HUB, OUTPOST_TOKEN_FILE, OUTPOST_CA)")
    # Empty, each would read as not given: OUTPOST_HUB (or --data) would answer instead.
    where.add_argument(
        "--hub",
        type=datafolders.text("the hub's API, https://HOST:PORT"),
        metavar="URL",
        help="the hub's API, https://HOST:PORT",
    )
    where.add_argument(
        "--token-file",
        type=datafolders.path("the file holding an API token"),
        metavar="FILE",
        help="file holding an API token (from `outpost-hub token create`)",
    )
    where.add_argument(
        "--ca",
        type=datafolders.path("the CA certificate file"),
        metavar="FILE",
        help="CA certificate the hub's is checked against",
    )
    where.add_argument(
        "--data",
        type=datafolders.argument,
        help="on the hub machine: its data folder (gives the URL, the CA and, without "
        "--token-file, a short admin session)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def parse_share(text: str) -> float:
    """`10%`, `10` or `0.1` as a share in [0, 1]: a bare number above 1 is a percentage,
    one below 1 a fraction, and a bare 1 is refused (1 %, or all of them?)."""
    bare = not text.endswith("%")
    value = _number(text.removesuffix("%"))
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: write 10%, or 0.1")
    if bare and value == 1:
        raise argparse.ArgumentTypeError(f"{text!r} is ambiguous: write 1% or 100%")
    share = value / 100 if not bare or value > 1 else value
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0% and 100%")
    return share


def _fraction(text: str) -> float:
    """A finite number from 0 to 1 (argparse names the flag when it is not)."""
    value = _number(text)
    if not 0 <= value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


# The most one page of the API holds (hub/api/params.py's MAX_LIMIT, which a test holds
# this to): not imported, as the parser loads nothing of the hub's server.
MAX_PAGE = 500


def _page(text: str) -> int:
    """How many to show: a whole number from 1 to `MAX_PAGE` (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_PAGE}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _ratio(text: str) -> float:
    """A positive, finite ratio (argparse names the flag when it is not)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse names the flag when it is not)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value
