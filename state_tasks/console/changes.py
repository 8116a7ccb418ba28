"""The console's live feed: state changes read from Celery's own task events.

Workers already send task events (``worker_send_task_events``, on by default for Flower),
so watching them costs the workers nothing: the console opens one more event receiver,
as Flower does. A ``task-received`` event carries the task's keyword arguments (scope and
key), the ``task-succeeded`` event of the same task its result (old and new value), and
the two together are one change, in the shape of the trigger events:
``state:created``, ``state:updated``, ``state:deleted``, with the key's ``version`` where
the task's result gives it (set and update; a delete's answer is the old value only) and a
delete's ``reason``.

An expiry has no state task: a worker's sweeper removes the key and fires its
``state:deleted`` event (``reason: "expired"``) straight to the triggers. The feed sees it
in the arguments of the trigger tasks that event starts (each handler or condition task
carries the event), so an expiry shows when a trigger watches its key, once per expiry
(its ``event_id``), unless its value was so long that Celery cut the event before its
``reason``.

What Celery puts in an event is a ``repr``, cut at 1024 characters and three levels of
nesting (``argsrepr_maxsize``, ``resultrepr_maxsize``). Within that, the values are parsed
back exactly (:func:`ast.literal_eval`, never ``eval``); beyond it a change keeps its
scope, key and type and shows the values as Celery wrote them (``exact: false``), and the
page reads the current value on demand.

Not seen: a change made *inside* a worker without a task of its own (a handler calling
``iii.trigger`` or a state task in-process), and changes made while the console's receiver
is not connected (it reconnects by itself). Pure except :class:`ChangeFeed`'s thread.
"""

from __future__ import annotations

import ast
import io
import itertools
import logging
import secrets
import threading
import time
import tokenize
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

#: The state functions that change something, and so make feed rows.
MUTATIONS = frozenset({"state::set", "state::update", "state::delete", "state::batch"})
#: Changes kept for a page that opens (or reconnects) after they happened.
DEFAULT_BACKLOG = 500
#: Tasks seen received but not yet finished, at most (the oldest are forgotten first).
DEFAULT_PENDING_MAX = 10_000
#: Celery's limit on a task event's argument and result reprs (``argsrepr_maxsize``,
#: ``kwargsrepr_maxsize``, ``resultrepr_maxsize``), and how close to it a repr may have
#: been cut.
REPR_LIMIT = 1024
REPR_MARGIN = 48
#: The task events that end a task: its pending arguments are dropped (only a success makes
#: rows). A task rejected by its worker (``task_reject_on_worker_lost``: requeued, or given up
#: without a result) ends too; a requeued one is received again.
FINISHED_EVENTS = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")
#: Seconds between two attempts to reconnect the event receiver.
RECONNECT_DELAY_S = 2.0

Change = dict[str, Any]
Listener = Callable[[Change], None]


def _json_pure(value: Any) -> bool:
    """True if ``value`` is made only of what JSON holds (no sets, tuples or ``...``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool | int | float | str):
            continue
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


def parse_repr(text: str | None) -> tuple[bool, Any]:
    """``(True, value)`` if ``text`` is a whole ``repr`` of a JSON value, else ``(False, None)``."""
    if text is None:
        return False, None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None
    return (True, value) if _json_pure(value) else (False, None)


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    tokens: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            tokens.append(token)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a repr cut short: keep what came before
    return tokens


def _elements(text: str, opening: str) -> list[str]:
    """The source text of each top-level element of a container ``repr`` (``{`` or ``[``),
    even a truncated one; Celery's ``...`` marks are left out."""
    line_starts = [0]
    for line in text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        return line_starts[position[0] - 1] + position[1]

    tokens = [
        t
        for t in _tokens(text)
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT)
    ]
    if not tokens or tokens[0].string != opening:
        return []
    elements: list[str] = []
    depth, first = 0, 1
    for index, token in enumerate(tokens):
        is_op = token.type == tokenize.OP
        if is_op and token.string in "([{":
            depth += 1
            continue
        closing = is_op and token.string in ")]}"
        if (closing and depth == 1) or (depth == 1 and is_op and token.string == ","):
            if index > first:
                piece = text[offset(tokens[first].start) : offset(tokens[index - 1].end)]
                if piece != "...":
                    elements.append(piece)
            first = index + 1
        if closing:
            depth -= 1
            if depth == 0:
                break
    return elements


def top_level_fields(text: str) -> dict[str, str]:
    """The source text of each string-keyed entry of a dict ``repr``, even a truncated one.

    ``"{'scope': 'users', 'key': 'u1', 'value': {'a': {...}}, ...}"`` gives
    ``{"scope": "'users'", "key": "'u1'", "value": "{'a': {...}}"}``.
    """
    fields: dict[str, str] = {}
    for element in _elements(text, "{"):
        tokens = _tokens(element)
        if len(tokens) < 3 or tokens[0].type != tokenize.STRING or tokens[1].string != ":":
            continue
        name_ok, name = parse_repr(tokens[0].string)
        if name_ok and isinstance(name, str):
            fields[name] = element[tokens[2].start[1] :].strip()
    return fields


def list_items(text: str) -> list[str]:
    """The source text of each element of a list ``repr``, even a truncated one."""
    return _elements(text, "[")


def _name(text: str | None, whole: bool) -> tuple[bool, str]:
    """A scope or key from the arguments' repr; not one that Celery cut short (it then ends
    in ``...`` inside a repr that does not parse whole)."""
    ok, name = parse_repr(text)
    if not ok or not isinstance(name, str):
        return False, ""
    if not whole and text is not None and text[:-1].endswith("...") and len(text) > 64:
        return False, ""
    return True, name


def may_be_cut(text: str | None) -> bool:
    """Whether Celery may have cut this repr short: a cut string still parses (``'xx...'``),
    so a repr that reached the limit is shown, never trusted as the value."""
    return text is not None and len(text) >= REPR_LIMIT - REPR_MARGIN


def _value(fields: dict[str, str], name: str, trusted: bool = True) -> tuple[bool, Any, str | None]:
    """``(exact, value, text)`` of one entry: the value when it parses and is trusted, else
    its text."""
    text = fields.get(name)
    exact, value = parse_repr(text)
    if exact and trusted:
        return True, value, None
    return False, None, text


def _version(fields: dict[str, str]) -> int | None:
    """The ``version`` entry of a result or an event, if it has one."""
    ok, version = parse_repr(fields.get("version"))
    return version if ok and isinstance(version, int) and not isinstance(version, bool) else None


def _row(
    event_type: str,
    scope: str,
    key: str,
    old: tuple[bool, Any, str | None],
    new: tuple[bool, Any, str | None],
    base: dict[str, Any],
    version: int | None = None,
) -> Change:
    row = {
        **base,
        "event_type": event_type,
        "scope": scope,
        "key": key,
        "old_value": old[1],
        "new_value": new[1],
        # Where Celery cut a value short: what it showed (a Python repr), else null.
        "old_text": old[2],
        "new_text": new[2],
        "exact": old[0] and new[0],
        # The key's version after the change (null where the task's answer does not say).
        "version": version,
    }
    if event_type == "state:deleted":
        row["reason"] = "deleted"
    return row


_NONE = (True, None, None)


def changes_from_task(
    name: str,
    kwargs_repr: str,
    result_repr: str | None,
    *,
    task_id: str = "",
    worker: str = "",
    timestamp: float | None = None,
) -> list[Change]:
    """The changes one succeeded state task made, from its task events' reprs.

    A repeat (``replayed``), a delete of an absent key and a task whose scope or key cannot be
    read make none. Rows have no ``seq`` yet (the feed numbers them).
    """
    if name not in MUTATIONS:
        return []
    arguments = top_level_fields(kwargs_repr)
    whole = parse_repr(kwargs_repr)[0]
    scope_ok, scope = _name(arguments.get("scope"), whole)
    if not scope_ok:
        return []
    moment = datetime.fromtimestamp(timestamp or time.time(), UTC)
    base: dict[str, Any] = {
        "time": moment.isoformat(timespec="milliseconds"),
        "task_id": task_id,
        "worker": worker,
    }
    result_ok, result = parse_repr(result_repr)
    if name == "state::batch":
        return _batch_changes(scope, kwargs_repr, result_ok, result, result_repr, base)
    key_ok, key = _name(arguments.get("key"), whole)
    if not key_ok or result_repr is None:
        return []
    if name == "state::delete":
        if result_repr == "None":
            return []
        trusted = result_ok and not may_be_cut(result_repr)
        old: tuple[bool, Any, str | None] = (
            (True, result, None) if trusted else (False, None, result_repr)
        )
        return [_row("state:deleted", scope, key, old, _NONE, base)]
    outcome = top_level_fields(result_repr)
    if "replayed" in outcome:
        return []
    trusted = not may_be_cut(result_repr)
    old, new = _value(outcome, "old_value", trusted), _value(outcome, "new_value", trusted)
    created = outcome.get("old_value") == "None"
    kind = "state:created" if created else "state:updated"
    return [_row(kind, scope, key, old, new, base, _version(outcome))]


def _batch_changes(
    scope: str,
    kwargs_repr: str,
    result_ok: bool,
    result: Any,
    result_repr: str | None,
    base: dict[str, Any],
) -> list[Change]:
    """One row per change of a batch: each operation's kind and key from the arguments, its
    old and new value from the result (as far as Celery's reprs reach)."""
    outcome = top_level_fields(result_repr or "")
    if "replayed" in outcome:
        return []
    operations_text = top_level_fields(kwargs_repr).get("operations", "")
    results_text = outcome.get("results", "")
    operations, results = list_items(operations_text), list_items(results_text)
    trusted = not may_be_cut(result_repr)
    cut = not operations or any(
        text.rstrip().endswith("...]") for text in (operations_text, results_text)
    )
    rows: list[Change] = []
    for operation, answer in zip(operations, results, strict=False):
        fields = top_level_fields(operation)
        kind_ok, kind = parse_repr(fields.get("op"))
        key_ok, key = _name(fields.get("key"), False)
        if not (kind_ok and key_ok):
            cut = True
            continue
        if kind == "delete":
            if answer != "None":
                old_ok, old = parse_repr(answer)
                old_ok = old_ok and trusted
                rows.append(
                    _row(
                        "state:deleted",
                        scope,
                        key,
                        (old_ok, old, None if old_ok else answer),
                        _NONE,
                        base,
                    )
                )
            continue
        values = top_level_fields(answer)
        created = values.get("old_value") == "None"
        rows.append(
            _row(
                "state:created" if created else "state:updated",
                scope,
                key,
                _value(values, "old_value", trusted),
                _value(values, "new_value", trusted),
                base,
                _version(values),
            )
        )
    if cut or len(operations) != len(results):
        # Some operations are beyond what Celery showed: one row says the batch did more.
        rows.append(
            {
                **base,
                "event_type": "state:batch",
                "scope": scope,
                "key": "",
                "old_value": None,
                "new_value": None,
                "old_text": None,
                "new_text": result_repr,
                "exact": False,
                "version": None,
            }
        )
    return rows


def expiry_from_task(
    args_repr: str,
    *,
    task_id: str = "",
    worker: str = "",
    timestamp: float | None = None,
) -> Change | None:
    """The expiry a trigger task carries, from its arguments' repr: a ``state:deleted`` event
    with ``reason: "expired"`` as its first argument; ``None`` for any other task."""
    if "'expired'" not in args_repr:  # most tasks: no parsing
        return None
    elements = _elements(args_repr, "(") or _elements(args_repr, "[")
    if not elements:
        return None
    fields = top_level_fields(elements[0])
    expected = {"type": "state", "event_type": "state:deleted", "reason": "expired"}
    for name, wanted in expected.items():
        if parse_repr(fields.get(name)) != (True, wanted):
            return None
    scope_ok, scope = _name(fields.get("scope"), False)
    key_ok, key = _name(fields.get("key"), False)
    id_ok, event_id = parse_repr(fields.get("event_id"))
    if not (scope_ok and key_ok and id_ok and isinstance(event_id, str)):
        return None
    moment = datetime.fromtimestamp(timestamp or time.time(), UTC)
    base: dict[str, Any] = {
        "time": moment.isoformat(timespec="milliseconds"),
        "task_id": task_id,
        "worker": worker,
        "event_id": event_id,
    }
    old = _value(fields, "old_value", not may_be_cut(args_repr))
    row = _row("state:deleted", scope, key, old, _NONE, base, _version(fields))
    row["reason"] = "expired"
    return row


class ChangeFeed:
    """Celery task events in, changes out: to every listener, and into a backlog.

    :param app: the Celery app whose broker the workers send their events to.
    :param backlog: how many recent changes a page that opens late still gets.
    """

    def __init__(
        self,
        app: Any,
        backlog: int = DEFAULT_BACKLOG,
        pending_max: int = DEFAULT_PENDING_MAX,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.app = app
        self._redact = redact
        self._recent: deque[Change] = deque(maxlen=backlog)
        self._pending: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._pending_max = pending_max
        # The event ids of the expiries shown (several trigger tasks carry the same one).
        self._expiries: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        #: This run's mark: a change's event id is ``<boot>-<seq>``, so the id a page kept from
        #: before a restart of the console (numbers start again at 1) is never taken for one
        #: of this run's.
        self.boot = secrets.token_hex(4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self.connected = False
        self.error: str | None = None

    # -- listeners --------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` (from the receiver's thread) for each new change."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def recent(self, after_seq: int = 0) -> list[Change]:
        """The kept changes numbered above ``after_seq``, oldest first."""
        with self._lock:
            return [change for change in self._recent if change["seq"] > after_seq]

    def event_id(self, change: Change) -> str:
        """The server-sent event id of a change: ``<boot>-<seq>``."""
        return f"{self.boot}-{change['seq']}"

    def seq_after(self, last_event_id: str | None) -> int:
        """The ``seq`` a reconnecting page got last, from its ``Last-Event-ID``: 0 (send the
        whole backlog) for an id of another run of the console, or none."""
        boot, _, seq = (last_event_id or "").partition("-")
        if boot != self.boot or not seq.isascii() or not seq.isdigit() or len(seq) > 18:
            return 0
        return int(seq)

    def status(self) -> dict[str, Any]:
        """Whether the receiver is connected, and its last error (passwords redacted)."""
        return {"connected": self.connected, "error": self.error}

    # -- events -----------------------------------------------------------------------

    def handle(self, event: dict[str, Any]) -> None:
        """Take one Celery task event (a dict as the receiver gives it)."""
        kind, task_id = event.get("type"), str(event.get("uuid", ""))
        if kind == "task-received":
            name = event.get("name")
            if name in MUTATIONS:
                with self._lock:
                    self._pending[task_id] = (str(name), str(event.get("kwargs", "")))
                    while len(self._pending) > self._pending_max:
                        self._pending.popitem(last=False)
            else:
                self._expiry(event, task_id)
            return
        if kind not in FINISHED_EVENTS:
            return
        with self._lock:
            known = self._pending.pop(task_id, None)
        if known is None or kind != "task-succeeded":
            return
        name, kwargs_repr = known
        rows = changes_from_task(
            name,
            kwargs_repr,
            event.get("result"),
            task_id=task_id,
            worker=str(event.get("hostname", "")),
            timestamp=event.get("timestamp"),
        )
        self.publish(rows)

    def _expiry(self, event: dict[str, Any], task_id: str) -> None:
        """Publish the expiry a trigger task carries, the first time it is seen."""
        row = expiry_from_task(
            str(event.get("args", "")),
            task_id=task_id,
            worker=str(event.get("hostname", "")),
            timestamp=event.get("timestamp"),
        )
        if row is None:
            return
        with self._lock:
            if row["event_id"] in self._expiries:
                return
            self._expiries[row["event_id"]] = None
            while len(self._expiries) > self._pending_max:
                self._expiries.popitem(last=False)
        self.publish([row])

    def publish(self, rows: Iterable[Change]) -> None:
        """Number the rows, keep them, and hand them to every listener."""
        for row in rows:
            with self._lock:
                row["seq"] = next(self._seq)
                self._recent.append(row)
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(row)
                except Exception:  # one broken page must not stop the feed
                    logger.exception("a live-feed listener failed")

    # -- the receiver thread ------------------------------------------------------------

    def start(self) -> None:
        """Start receiving in a daemon thread; it reconnects until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="console-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving (returns at once; the thread ends within a second)."""
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True

    def _run(self) -> None:
        handlers = {name: self.handle for name in ("task-received", *FINISHED_EVENTS)}
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = self.app.events.Receiver(connection, handlers=handlers)
                    self.connected = True
                    self.error = None
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as e:
                self.error = self._redact(" ".join(f"{type(e).__name__}: {e}".split()))
                logger.warning("live feed: event receiver stopped (%s); reconnecting", self.error)
            finally:
                self.connected = False
            self._stop.wait(RECONNECT_DELAY_S)
