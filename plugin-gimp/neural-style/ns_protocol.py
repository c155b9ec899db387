"""neural-style daemon protocol, version 1, for the GIMP plug-in (standard library only).

The normative description is protocol/README.md in the neural-style repository; the golden
vectors in protocol/vectors/ are checked against this module by plugin-gimp/tests.

Frame: b"NSTY" | header length (u32 BE) | payload length (u64 BE) | JSON header | payload.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

PROTOCOL_VERSION = 1
MAGIC = b"NSTY"
PREFIX = struct.Struct(">4sIQ")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 30
SOCKET_ENV = "NEURAL_STYLE_SOCKET"
BINARY_ENV = "NEURAL_STYLE_BIN"


class ProtocolError(Exception):
    """A frame or message that cannot be used. `kind` matches the golden vectors' error names."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class DaemonError(Exception):
    """An `error` event from the daemon."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class NoDaemon(Exception):
    """Nothing listens on the socket."""


def encode_frame(header, payload=b""):
    """One frame: header (a dict with "type") and payload bytes."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return PREFIX.pack(MAGIC, len(text), len(payload)) + text + bytes(payload)


def parse_header(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("not_utf8", "frame header is not UTF-8")
    try:
        header = json.loads(text)
    except ValueError as e:
        raise ProtocolError("bad_message", "frame header is not JSON: %s" % e)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("bad_message", "frame header has no type")
    return header


def read_exact(read, n, allow_eof=False):
    chunks, got = [], 0
    while got < n:
        chunk = read(n - got)
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ProtocolError("truncated", "the connection closed in the middle of a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(read):
    """Reads one frame with `read(n)`; returns (header, payload), or None at a clean end."""
    prefix = read_exact(read, PREFIX.size, allow_eof=True)
    if prefix is None:
        return None
    magic, h, p = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", "not a neural-style frame (magic %r)" % magic)
    if h == 0 or h > MAX_HEADER:
        raise ProtocolError("header_size", "frame header of %d bytes" % h)
    if p > MAX_PAYLOAD:
        raise ProtocolError("payload_too_large", "frame payload of %d bytes" % p)
    raw = read_exact(read, h)
    payload = read_exact(read, p) if p else b""
    return parse_header(raw), payload


KNOWN_REQUESTS = {"hello", "stylize", "cancel", "status", "shutdown"}
KNOWN_EVENTS = {"hello", "accepted", "queued", "started", "progress", "result", "cancelled", "error",
                "status", "shutting_down"}


def check_request(header):
    """The fields a request of its type must have, with their JSON types (as the daemon does)."""
    t = header["type"]
    if t not in KNOWN_REQUESTS:
        raise ProtocolError("bad_message", "unknown request type %r" % t)
    need = {"hello": {"protocol": int, "client": str}, "cancel": {"job": int},
            "stylize": {"content": dict, "styles": list}}.get(t, {})
    for field, kind in need.items():
        if not isinstance(header.get(field), kind) or isinstance(header.get(field), bool):
            raise ProtocolError("bad_message", "%s: field %s must be %s" % (t, field, kind.__name__))
    return header


def decode(data):
    """Decodes a frame held in memory: (header, payload, bytes used)."""
    pos = [0]

    def read(n):
        chunk = data[pos[0]:pos[0] + n]
        pos[0] += len(chunk)
        return chunk

    frame = read_frame(read)
    if frame is None:
        raise ProtocolError("truncated", "no frame")
    return frame[0], frame[1], pos[0]


def image_ref(offset, data, fmt, width=None, height=None):
    ref = {"offset": offset, "length": len(data), "format": fmt}
    if width is not None:
        ref["width"] = width
        ref["height"] = height
    return ref


def slice_image(ref, payload):
    end = ref["offset"] + ref["length"]
    if end > len(payload):
        raise ProtocolError("bad_message", "image outside the payload")
    return payload[ref["offset"]:end]


def socket_path(explicit=None):
    """The socket path by the rule the daemon uses (see protocol/README.md)."""
    if explicit:
        return explicit
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if sys.platform == "win32":
        return r"\\.\pipe\neural-style-%s" % os.environ.get("USERNAME", "user")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "neural-style", "daemon.sock")
    return os.path.join(tempfile.gettempdir(), "neural-style-%d" % os.getuid(), "daemon.sock")


class _Pipe:
    """A Windows named pipe opened as a file, with the socket calls this module uses."""

    def __init__(self, path):
        self.f = open(path, "r+b", buffering=0)

    def recv(self, n):
        return self.f.read(n)

    def sendall(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()


class Connection:
    """A connection to the daemon, greeted (hello exchanged)."""

    def __init__(self, path=None, client="gimp-plugin", timeout=None):
        self.path = socket_path(path)
        try:
            if sys.platform == "win32":
                self.sock = _Pipe(self.path)
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                try:
                    self.sock.connect(self.path)
                except OSError:
                    self.sock.close()
                    raise
        except OSError as e:
            raise NoDaemon("no neural-style daemon at %s: %s" % (self.path, e))
        try:
            self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "client": client})
        except OSError:
            pass  # a refusing daemon answers with an error and closes at once: read it below
        header, _ = self.recv()
        if header["type"] == "error":
            raise DaemonError(header.get("code"), header.get("message"))
        if header["type"] != "hello":
            raise ProtocolError("bad_message", "expected hello, got %s" % header["type"])
        self.server = header

    def send(self, header, payload=b""):
        self.sock.sendall(encode_frame(header, payload))

    def recv(self):
        frame = read_frame(self.sock.recv)
        if frame is None:
            raise ProtocolError("truncated", "the daemon closed the connection")
        return frame

    def status(self):
        self.send({"type": "status"})
        header, _ = self.recv()
        if header["type"] != "status":
            raise DaemonError(header.get("code"), header.get("message", str(header)))
        return header

    def readable(self, timeout):
        """Whether a frame has started arriving within `timeout` seconds (always true on Windows,
        whose pipes select() cannot watch: there every read blocks)."""
        if sys.platform == "win32":
            return True
        import select
        return bool(select.select([self.sock], [], [], timeout)[0])

    def stylize(self, request, payload, on_event=None, should_cancel=None, idle=None, poll=0.1):
        """Sends a stylize request and returns (header, payload) of its `result`, or of the
        `cancelled` event that carries the current image when `should_cancel()` turned true while
        the job ran (then a `cancel` was sent, once). Calls on_event for every event on the way,
        and idle() every `poll` seconds while no event arrives (a UI's main loop). Raises
        DaemonError on error, or on a cancellation that carries no image (the job never ran)."""
        req = dict(request)
        req["type"] = "stylize"
        self.send(req, payload)
        job, cancel_sent = None, False
        while True:
            while (idle or should_cancel) and not self.readable(poll):
                if idle:
                    idle()
                if job is not None and not cancel_sent and should_cancel and should_cancel():
                    self.send({"type": "cancel", "job": job})
                    cancel_sent = True
            header, data = self.recv()
            if on_event:
                on_event(header, data)
            t = header["type"]
            if job is None and "job" in header:
                job = header["job"]
            if t == "result":
                return header, data
            if t == "error":
                if cancel_sent and header.get("code") == "not_found":
                    continue  # the job ended before our cancel reached it: its result follows
                raise DaemonError(header.get("code"), header.get("message"))
            if t == "cancelled":
                if header.get("image") is not None:
                    return header, data
                if header.get("summary") is not None or not cancel_sent:
                    raise DaemonError("cancelled", "the job was cancelled before it started")
                # the acknowledgement of our own cancel: the job's `cancelled` follows
            if job is not None and not cancel_sent and should_cancel and should_cancel():
                self.send({"type": "cancel", "job": job})
                cancel_sent = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def find_binary(configured=None):
    """The neural-style executable: configured path, $NEURAL_STYLE_BIN, PATH, ~/.local/bin."""
    candidates = [configured, os.environ.get(BINARY_ENV), shutil.which("neural-style"),
                  os.path.expanduser("~/.local/bin/neural-style")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def start_daemon(binary, path=None, wait=120.0, on_wait=None):
    """Starts `neural-style serve` detached (it outlives the plug-in) and waits until it is
    ready. Returns a greeted Connection."""
    path = socket_path(path)
    log_dir = os.path.dirname(path) or tempfile.gettempdir()
    try:
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        log = open(os.path.join(log_dir, "daemon.log"), "ab")
    except OSError:
        log = subprocess.DEVNULL
    kwargs = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log}
    if sys.platform == "win32":
        kwargs["creationflags"] = 0x00000008 | 0x00000200  # DETACHED_PROCESS | NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True  # not killed with the plug-in's process group
    proc = subprocess.Popen([binary, "serve", "--socket", path], **kwargs)
    deadline = time.time() + wait
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DaemonError("start_failed", "neural-style serve exited with code %d; see %s"
                              % (proc.returncode, os.path.join(log_dir, "daemon.log")))
        try:
            conn = Connection(path)
            if conn.status().get("ready"):
                return conn
            conn.close()
        except (NoDaemon, ProtocolError, DaemonError):
            pass
        if on_wait:
            on_wait(time.time() + wait - deadline)
        time.sleep(0.1)
    raise DaemonError("start_failed", "the daemon did not become ready within %d s" % wait)
