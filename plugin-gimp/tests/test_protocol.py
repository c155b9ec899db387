"""The plug-in's protocol code against the golden vectors (protocol/vectors) and a live-free
round trip. Standard library unittest: python3 -m unittest discover -s plugin-gimp/tests"""
import glob
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "plugin-gimp", "neural-style"))

import ns_protocol as proto  # noqa: E402

VECTORS = os.path.join(ROOT, "protocol", "vectors")


def vectors():
    for js in sorted(glob.glob(os.path.join(VECTORS, "*.json"))):
        name = os.path.splitext(os.path.basename(js))[0]
        with open(js) as f:
            doc = json.load(f)
        with open(os.path.join(VECTORS, name + ".bin"), "rb") as f:
            data = f.read()
        yield name, doc, data


class GoldenVectors(unittest.TestCase):
    def test_there_are_vectors(self):
        names = [n for n, _, _ in vectors()]
        self.assertGreaterEqual(len([n for n in names if n.startswith("request_")]), 5)
        self.assertGreaterEqual(len([n for n in names if n.startswith("event_")]), 8)
        self.assertGreaterEqual(len([n for n in names if n.startswith("invalid_")]), 6)

    def test_valid_vectors_decode_and_reencode(self):
        for name, doc, data in vectors():
            if not doc["valid"]:
                continue
            with self.subTest(name):
                header, payload, used = proto.decode(data)
                self.assertEqual(used, len(data))
                self.assertEqual(header, doc["header"])
                self.assertEqual(payload.hex(), doc["payload_hex"])
                # our encoder produces the same bytes from the decoded header
                self.assertEqual(proto.encode_frame(header, payload), data)
                if doc["direction"] == "request":
                    proto.check_request(header)
                else:
                    self.assertIn(header["type"], proto.KNOWN_EVENTS)
                for key in ("content", "image", "preview"):
                    ref = header.get(key)
                    if isinstance(ref, dict):
                        self.assertEqual(len(proto.slice_image(ref, payload)), ref["length"])

    def test_invalid_vectors_are_rejected_with_the_right_kind(self):
        for name, doc, data in vectors():
            if doc["valid"]:
                continue
            with self.subTest(name):
                with self.assertRaises(proto.ProtocolError) as cm:
                    header, _, _ = proto.decode(data)
                    proto.check_request(header)
                self.assertEqual(cm.exception.kind, doc["error"])


class Framing(unittest.TestCase):
    def test_round_trip_and_truncation(self):
        data = proto.encode_frame({"type": "status"}, b"xyz")
        header, payload, used = proto.decode(data)
        self.assertEqual((header, payload, used), ({"type": "status"}, b"xyz", len(data)))
        for cut in range(1, len(data)):
            with self.assertRaises(proto.ProtocolError) as cm:
                proto.decode(data[:cut])
            self.assertEqual(cm.exception.kind, "truncated")

    def test_socket_rule(self):
        env = dict(os.environ)
        try:
            os.environ["NEURAL_STYLE_SOCKET"] = "/x/y.sock"
            self.assertEqual(proto.socket_path(), "/x/y.sock")
            self.assertEqual(proto.socket_path("/explicit"), "/explicit")
            del os.environ["NEURAL_STYLE_SOCKET"]
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/7"
            self.assertEqual(proto.socket_path(), "/run/user/7/neural-style/daemon.sock")
            del os.environ["XDG_RUNTIME_DIR"]
            self.assertTrue(proto.socket_path().endswith("neural-style-%d/daemon.sock" % os.getuid()))
        finally:
            os.environ.clear()
            os.environ.update(env)

    def test_no_daemon_is_a_clear_error(self):
        with self.assertRaises(proto.NoDaemon) as cm:
            proto.Connection("/nonexistent/dir/daemon.sock")
        self.assertIn("/nonexistent/dir/daemon.sock", str(cm.exception))


class Cancel(unittest.TestCase):
    """Connection.stylize's cancel: a scripted daemon on a real Unix socket (the real daemon's
    side is tested through GIMP in tests/tests/gimp.rs)."""

    def serve(self, script):
        import socket
        import tempfile
        import threading
        d = tempfile.mkdtemp()
        path = os.path.join(d, "daemon.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        received = []

        def run():
            conn, _ = server.accept()
            read = conn.recv
            received.append(proto.read_frame(read)[0])  # hello
            conn.sendall(proto.encode_frame({"type": "hello", "protocol": proto.PROTOCOL_VERSION}))
            received.append(proto.read_frame(read)[0])  # stylize
            script(conn, received)
            conn.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return path, received, t

    def test_a_requested_cancel_is_sent_once_and_returns_the_current_image(self):
        def script(conn, received):
            conn.sendall(proto.encode_frame({"type": "accepted", "job": 7, "position": 0}))
            conn.sendall(proto.encode_frame({"type": "started", "job": 7, "width": 2, "height": 1}))
            for i in range(1, 4):
                conn.sendall(proto.encode_frame({"type": "progress", "job": 7, "iteration": i, "total": 100}))
            received.append(proto.read_frame(conn.recv)[0])  # the cancel
            conn.sendall(proto.encode_frame({"type": "cancelled", "job": 7}))  # acknowledgement
            image = {"offset": 0, "length": 8, "format": "rgba8", "width": 2, "height": 1}
            conn.sendall(proto.encode_frame({"type": "cancelled", "job": 7, "image": image,
                                             "summary": {"stop_reason": "cancelled"}}, b"\x01" * 8))

        path, received, t = self.serve(script)
        conn = proto.Connection(path)
        seen = []
        header, data = conn.stylize({"params": {}}, b"", lambda h, _: seen.append(h["type"]),
                                    should_cancel=lambda: "progress" in seen, poll=0.01)
        conn.close()
        t.join(5)
        self.assertEqual(header["type"], "cancelled")
        self.assertEqual(proto.slice_image(header["image"], data), b"\x01" * 8)
        cancels = [r for r in received if r["type"] == "cancel"]
        self.assertEqual(cancels, [{"type": "cancel", "job": 7}])

    def test_a_cancel_that_comes_too_late_still_returns_the_result(self):
        def script(conn, received):
            conn.sendall(proto.encode_frame({"type": "accepted", "job": 8, "position": 0}))
            conn.sendall(proto.encode_frame({"type": "progress", "job": 8, "iteration": 1, "total": 1}))
            received.append(proto.read_frame(conn.recv)[0])
            conn.sendall(proto.encode_frame({"type": "error", "job": 8, "code": "not_found", "message": "no job 8"}))
            image = {"offset": 0, "length": 4, "format": "rgba8", "width": 1, "height": 1}
            conn.sendall(proto.encode_frame({"type": "result", "job": 8, "image": image, "summary": {}}, b"abcd"))

        path, received, t = self.serve(script)
        conn = proto.Connection(path)
        header, data = conn.stylize({"params": {}}, b"", should_cancel=lambda: True, poll=0.01)
        conn.close()
        t.join(5)
        self.assertEqual((header["type"], data), ("result", b"abcd"))


if __name__ == "__main__":
    unittest.main()
